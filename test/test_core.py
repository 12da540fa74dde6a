# Copyright 2026 The sage_irp_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""SageCore without ROS: one result per question, history, salient memory, adaptation, failures."""

import sqlite3
import threading

import pytest
import torch

from faulty_generator import FaultyGenerator, faulty_core_of
from sage_irp_ros import errors
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.serving.core import SageCore
from sage_irp_ros.irp.options import AnswerOptions
from sage_irp_ros.questions import Question
from sage_irp_ros.results import Result, ResultError

RESULT_KEYS = {"id", "conversation", "question", "ok", "answer", "choice", "probabilities", "json", "tool_call",
               "confidence", "confident", "error", "snarc", "irp", "timing", "model", "backend",
               "warnings", "stamp"}


OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _core(model_dir, tmp_path, faults: FaultyGenerator | None = None):
    """A loaded core over ``model_dir``; with ``faults``, its generation goes through that generator."""
    cfg = SageConfig.from_mapping({
        "model": {"path": str(model_dir)},
        "llm_irp": {"max_tokens": 8, "irp_iterations": 3, "min_available_memory_mb": 0, "stopping": "off"},
        "snarc": {"salience_threshold": 0.0},  # everything is salient: every answer is stored
        "memory": {"db_path": str(tmp_path / "memory.db"), "consolidation_interval": 2}})
    core = SageCore(cfg, wrap_generator=faults.wrap if faults is not None else None)
    core.load()
    return core


@pytest.fixture
def core(tiny_model_dir, tmp_path):
    core = _core(tiny_model_dir, tmp_path)
    yield core
    core.release()


@pytest.fixture
def plain_core(tiny_plain_model_dir, tmp_path):
    """The tiny model without a chat template: its greedy row has text (the chat one's is blank)."""
    core = _core(tiny_plain_model_dir, tmp_path)
    yield core
    core.release()


def test_answer_has_the_documented_shape(core):
    result = core.answer(Question(text="What is 2+2?", id="q1"))
    assert isinstance(result, Result) and set(result.to_dict()) == RESULT_KEYS and result.ok and result.id == "q1"
    assert set(result.to_dict()["snarc"]) == {"surprise", "novelty", "arousal", "reward", "conflict", "total",
                                              "salient"}
    assert result.irp.candidates == 3 and len(result.irp.energies) == 4  # + the greedy row
    assert result.irp.temperatures == pytest.approx([0.7, 0.647, 0.594, 0.0])
    assert result.irp.candidates == 3
    assert result.timing.tokens > 0 and result.timing.total_s >= result.timing.inference_s


def test_salient_exchanges_are_stored_and_consolidated(core, tmp_path):
    ids = [core.answer(Question(text=f"Question {i}?", id=f"q{i}")).id for i in range(4)]
    with sqlite3.connect(tmp_path / "memory.db") as db:
        stored = [row[0] for row in db.execute("SELECT question_id FROM exchanges ORDER BY id")]
        consolidations = db.execute("SELECT COUNT(*) FROM consolidations").fetchone()[0]
    assert stored == ids and consolidations == 2
    assert core.store_status().ok


def test_history_feeds_the_next_prompt_and_reset_clears_it(core):
    core.answer(Question(text="My name is Ada.", conversation="c1"))
    second = core.answer(Question(text="What is my name?", conversation="c1"))
    assert second.irp.history_used == 1 and second.conversation == "c1"
    assert core.answer(Question(text="Hi", conversation="c2")).irp.history_used == 0
    assert core.answer(Question(text="Again?", conversation="c1", reset=True)).irp.history_used == 0
    assert core.reset_history() == 2


def test_questions_without_conversation_share_no_history(core):
    first = core.answer(Question(text="What is the capital of France?"))
    second = core.answer(Question(text="Say hello."))
    assert first.ok and second.ok
    assert first.conversation is None and second.conversation is None
    assert [first.irp.history_used, second.irp.history_used] == [0, 0]
    core.answer(Question(text="My name is Ada.", conversation="c1"))
    assert core.answer(Question(text="Name a primary color.")).irp.history_used == 0
    named = core.answer(Question(text="What is my name?", conversation="c1"))
    assert named.irp.history_used == 1  # only its own exchange, none of the unnamed ones
    assert [q for q, _ in core.history.get("c1")] == ["My name is Ada.", "What is my name?"]
    assert core.answer(Question(text="Start over?", reset=True)).ok  # no conversation: nothing to reset
    assert core.answer(Question(text="And?", conversation="c1")).irp.history_used == 2


def test_named_conversation_salience_is_the_research_scorers_for_its_own_sequence(core):
    """Interleaved unnamed questions and another conversation change nothing in a conversation's SNARC."""
    from sage_irp_ros.salience.snarc import SnarcScorer
    from test_snarc import reference_vectors

    research = SnarcScorer(core.cfg.snarc)
    earlier: list[tuple[str, str]] = []
    for n, vector in enumerate(reference_vectors()):
        core.answer(Question(text=f"Unrelated words number {n}?"))
        core.answer(Question(text=f"Other dialogue {n}?", conversation="other"))
        result = core.answer(Question(text=vector["question"], conversation="research"))
        want = research.score(vector["question"], result.answer, earlier, result.irp.best_energy)
        for dim, value in want.as_dict().items():
            assert result.snarc.as_dict()[dim] == pytest.approx(value, abs=1e-6), dim
        assert result.snarc.surprise == pytest.approx(vector["surprise"], abs=1e-6)  # questions only
        earlier.append((vector["question"], result.answer))


def test_surprise_without_conversation_compares_with_what_the_node_heard(core):
    assert core.answer(Question(text="alpha beta")).snarc.surprise == 0.0  # nothing heard yet
    core.answer(Question(text="gamma delta", conversation="c1"))
    assert core.answer(Question(text="gamma delta")).snarc.surprise == 0.0  # heard, in any conversation
    assert core.answer(Question(text="epsilon delta")).snarc.surprise == pytest.approx(0.5)
    for word in ("one", "two", "three"):
        core.answer(Question(text=word, conversation="c2"))
    assert core.answer(Question(text="alpha beta")).snarc.surprise == 1.0  # only the last 3 count
    core.reset_history()  # the reset_history service forgets what was heard too
    assert core.answer(Question(text="zeta")).snarc.surprise == 0.0


def test_exchanges_without_conversation_are_stored_as_unnamed(core):
    core.answer(Question(text="Alone?", id="u1"))
    core.answer(Question(text="Together?", id="n1", conversation="c1"))
    rows = core.store.query()
    assert [(r["question_id"], r["conversation"]) for r in rows] == [("u1", None), ("n1", "c1")]
    assert [r["question_id"] for r in core.store.query(conversation="")] == ["u1"]


def test_throttled_answers_with_the_greedy_row_only(plain_core):
    """Throttled: one row at T = 0, the very text an unthrottled run's greedy row gives; no sampled rows."""
    core = plain_core
    result = core.answer(Question(text="What is 2+2?"), throttled=True)
    assert result.ok and result.irp.throttled
    assert (len(result.irp.energies), result.irp.candidates, result.irp.rounds) == (1, 0, 1)
    assert result.irp.temperatures == [0.0] and len(result.irp.energies) == 1
    engine = core.engine
    state = engine.init_state("What is 2+2?", options=AnswerOptions.resolve(core.cfg.llm_irp))
    while not engine.halt(state):
        engine.step(state)
    greedy = [c for c in state.candidates if c.temperature == 0.0]
    assert len(state.candidates) == 4 and len(greedy) == 1
    assert result.answer == greedy[0].text and not engine.get_result(state).irp.throttled
    core.reconfigure(core.cfg.with_updates({"throttle.max_tokens": 2}))
    short = core.answer(Question(text="What is 2+2?"), throttled=True)
    assert len(short.irp.energies) == 1 and 0 < short.timing.tokens <= 2
    core.reconfigure(core.cfg.with_updates({"throttle.enabled": False}))
    normal = core.answer(Question(text="Hi"), throttled=True)
    assert len(normal.irp.energies) == 4 and not normal.irp.throttled and normal.irp.candidates == 3


def test_out_of_memory_while_throttled_retries_the_greedy_row(tiny_plain_model_dir, tmp_path):
    faults = FaultyGenerator(OOM, fail_calls={1})
    core = _core(tiny_plain_model_dir, tmp_path, faults)
    try:
        result = core.answer(Question(text="Hi"), throttled=True)
    finally:
        core.release()
    assert result.ok and len(result.irp.energies) == 1 and result.irp.throttled
    assert [(c.temperatures, c.failed) for c in faults.calls] == [([0.0], True), ([0.0], False)]


def test_result_json_round_trips_and_salient_results_are_stored_from_it(core):
    result = core.answer(Question(text="What is 2+2?", id="rt", conversation="c1"))
    assert Result.from_json(result.to_json()) == result
    row = core.store.query()[-1]
    assert (row["question_id"], row["conversation"], row["answer"]) == ("rt", "c1", result.answer)
    assert row["irp"] == result.irp.to_dict() and row["timing"] == result.timing.to_dict()
    assert row["total"] == result.salience and row["stamp"] == result.stamp
    failed = core.error_result(Question(text="x", id="e1"), errors.SageError(errors.QUEUE_FULL, "full"))
    assert not failed.ok and failed.error_code == errors.QUEUE_FULL and failed.salience is None
    assert Result.from_json(failed.to_json()) == failed


def test_memory_floor_refuses_with_out_of_memory(core):
    core.reconfigure(SageConfig.from_mapping({**_mapping(core), "llm_irp": {
        **_mapping(core)["llm_irp"], "min_available_memory_mb": 1_000_000}}))
    result = core.answer(Question(text="Hi"))
    assert not result.ok and result.error.code == errors.OUT_OF_MEMORY
    assert "min_available_memory_mb" in result.error.message


@pytest.fixture
def faulty_core(tiny_model_dir, tmp_path, request):
    """A core whose first generation call raises ``request.param`` (later calls reach the model)."""
    yield from faulty_core_of(_core, tiny_model_dir, tmp_path, request.param)


@pytest.mark.parametrize("faulty_core", [ValueError("kernel exploded")], indirect=True)
def test_generation_failure_is_a_result_and_serving_continues(faulty_core):
    core, faults = faulty_core
    failed = core.answer(Question(text="Hi"))
    assert failed.error == ResultError(errors.INFERENCE_FAILED, "ValueError: kernel exploded")
    assert [c.failed for c in faults.calls] == [True]  # not retried: only out of memory is
    assert core.answer(Question(text="Hi")).ok
    assert [c.failed for c in faults.calls] == [True, False]
    assert core.stats.snapshot()["errors"] == 1


@pytest.mark.parametrize("faulty_core", [OOM], indirect=True)
def test_out_of_memory_retries_once_with_fewer_candidates(faulty_core):
    core, faults = faulty_core
    result = core.answer(Question(text="Hi"))
    assert result.ok and len(result.irp.energies) == 1
    # the 3 sampled rows and the greedy one, then half the sampled ones (one) without the greedy row
    assert [(c.rows, c.failed) for c in faults.calls] == [(4, True), (1, False)]
    assert faults.calls[1].temperatures == [0.7]


def test_keep_alive_false_releases_the_model_after_each_answer(core):
    core.reconfigure(core.cfg.with_updates({"model.keep_alive": False}))
    assert core.answer(Question(text="Hi")).ok and core.lm is None
    assert core.answer(Question(text="Hi again")).ok and core.lm is None


def test_deadline_passed_in_queue(core):
    import time
    result = core.answer(Question(text="Hi", deadline_s=0.5), received=time.monotonic() - 1.0)
    assert result.error.code == errors.DEADLINE and result.timing.queued_s >= 1.0


def test_unwritable_store_does_not_stop_answers(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir)}, "llm_irp": {"max_tokens": 4},
                                   "snarc": {"salience_threshold": 0.0},
                                   "memory": {"db_path": str(blocker / "memory.db")}})
    core = SageCore(cfg)
    core.load()
    assert core.answer(Question(text="Hi")).ok
    status = core.store_status()
    assert not status.ok and str(blocker) in status.error


def _mapping(core):
    sections = {}
    for dotted, value in core.cfg.flat().items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, {})[key] = value
    return sections


# -- stats, live settings, load/release races ----------------------------------------------------------
def test_client_errors_are_refusals_and_latency_comes_from_answers_only(core):
    import time
    ok = core.answer(Question(text="Hi", id="ok-1"))
    assert ok.ok
    for _ in range(3):  # a client's deadline that passed while queued: a refusal, not a failure
        result = core.answer(Question(text="Hi", deadline_s=0.5), received=time.monotonic() - 1.0)
        assert result.error.code == errors.DEADLINE
    snap = core.stats.snapshot()
    assert (snap["served"], snap["errors"], snap["refused"], snap["consecutive_errors"]) == (1, 0, 3, 0)
    assert snap["last"]["total_s"] == ok.timing.total_s and snap["latency"]["count"] == 1


def test_history_bounds_apply_at_once(core):
    for i in range(3):
        core.answer(Question(text=f"Turn {i}?", conversation="c1"))
    core.answer(Question(text="Other?", conversation="c2"))
    core.reconfigure(SageConfig.from_mapping({**_mapping(core), "history": {
        **_mapping(core)["history"], "depth": 1, "max_conversations": 1}}))
    assert len(core.history) == 1 and core.history.get("c1") == []  # c1 was least recently used
    core.answer(Question(text="Again?", conversation="c2"))
    assert core.answer(Question(text="And?", conversation="c2")).irp.history_used == 1


def test_a_warm_up_failure_releases_the_model_it_loaded(tmp_path):
    from tiny_models import build_tiny_model

    from sage_irp_ros.weights import loader as model_loader

    short = build_tiny_model(tmp_path / "short", max_positions=8)  # warm-up's prompt does not fit
    core = SageCore(SageConfig.from_mapping({"model": {"path": str(short)},
                                             "memory": {"db_path": "none"}}))
    before = set(model_loader._cache)
    with pytest.raises(errors.SageError, match="context window"):
        core.load()
    assert core.lm is None and core.engine is None
    assert set(model_loader._cache) == before  # nothing left resident: a retry loads one copy only


def test_reconfigure_during_warm_up_is_applied_to_the_installed_engine(tiny_model_dir, tmp_path):
    base = {"model": {"path": str(tiny_model_dir)}, "llm_irp": {"candidates": 3},
            "memory": {"db_path": "none"}}
    changed = SageConfig.from_mapping({**base, "llm_irp": {"candidates": 1}})
    holder = {}

    def progress(line: str) -> None:
        if line.startswith("warm-up generation took"):  # after warm-up, before the engine is installed
            holder["core"].reconfigure(changed)

    core = holder["core"] = SageCore(SageConfig.from_mapping(base), progress=progress)
    core.load()
    try:
        assert core.engine.cfg.candidates == 1
    finally:
        core.release()


def test_a_cancelled_question_fails_with_the_cancel_reason(core):
    from sage_irp_ros.errors import SageError
    from sage_irp_ros.serving.worker import Cancel

    cancel = Cancel()
    cancel.request(SageError(errors.NOT_ACTIVE, "deactivated while this question ran"))
    result = core.answer(Question(text="Tell me a story.", id="cancelled"), cancel=cancel)
    # cancelled before its first token: the engine halts at once and the result carries the reason
    assert not result.ok and (result.error.code, result.error.message) == (
        errors.NOT_ACTIVE, "deactivated while this question ran")
    plain = threading.Event()
    plain.set()
    result = core.answer(Question(text="Tell me a story.", id="stopping"), cancel=plain)
    assert not result.ok and result.error.code == errors.SHUTTING_DOWN


def test_status_has_what_the_status_json_needs(core):
    status = core.status().to_dict()
    assert {"model", "device", "precision", "packed_layers", "weights", "forward", "stopping", "row_cost",
            "quantized_layers", "model_mb",
            "gpu_mem_mb", "max_memory_mb", "served", "errors", "refused", "consecutive_errors", "last", "latency",
            "memory_store", "generation"} == set(status)
    assert status["model"] and status["device"] == "cpu" and status["model_mb"] > 0
    core.refuse(None, errors.SageError(errors.QUEUE_FULL, "full"), question_id="r1")
    assert core.status().serving["refused"] == 1
    core.release()
    assert core.status().model is None and core.status().memory_store.path is None


def test_a_core_without_a_model_answers_every_question_with_the_reason(tmp_path):
    """No model loaded (keep_alive true, never configured): one error result per question, never a raise."""
    from sage_irp_ros.serving.core import Ask

    core = SageCore(SageConfig.from_mapping({"memory": {"db_path": "none"}}))
    assert core.answer(Question(text="Hi", id="a")).error.code == errors.MODEL_NOT_LOADED
    delivered = []
    results = core.answer_many([Ask(Question(text="one?", id="b")), Ask(Question(text="two?", id="c"))],
                               on_result=lambda index, result: delivered.append(result.id))
    assert [(r.id, r.error.code) for r in results] == [("b", errors.MODEL_NOT_LOADED), ("c", errors.MODEL_NOT_LOADED)]
    assert sorted(delivered) == ["b", "c"]
