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

"""Every ``ros2`` command that README.md and docs/rqt.md show, run as written against ``ros2 launch``.

The commands are read from the documents (fenced ``bash`` blocks and inline code), so a changed or new
command fails :func:`test_every_documented_ros2_command_is_run_or_has_a_reason` until this test runs it
(or says why it cannot: GUI tools, packages with no wheel here, example paths). The nodes run under
``ros2 launch sage_irp_ros edge.launch.py`` (the documented command, plus a tiny model and fast settings)
and end on SIGINT to launch, as Ctrl-C ends them, with exit code 0.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from ros2_tooling import (ROOT, fast_params_file, installed_env, interrupt, isolated, require_ros2_cli, ros2_executable,
                          tiny_model)

DOCS = ("README.md", "docs/rqt.md")
LAUNCH = "ros2 launch sage_irp_ros edge.launch.py"
NOT_RUN = {  # command: why this test does not run it
    f"{LAUNCH} model_path:=/models/Qwen2.5-0.5B-Instruct params_file:=/path/my.yaml":
        "example paths; test_launch_edge.py passes model_path and params_file",
    "ros2 run diagnostic_aggregator aggregator_node --ros-args --params-file "
    "$(ros2 pkg prefix sage_irp_ros)/share/sage_irp_ros/config/diagnostics_aggregator.yaml":
        "diagnostic_aggregator has no wheel here (the test checks the params file path it uses)",
    "ros2 topic echo /diagnostics_agg --field status": "needs diagnostic_aggregator",
    "ros2 run rqt_robot_monitor rqt_robot_monitor": "GUI",
    "ros2 run sage_irp_ros sage_irp doctor":
        "its verdicts depend on the machine (jtop, CUDA); test_doctor.py runs the same entry point",
}
GUI = re.compile(r"^ros2 run rqt_plot rqt_plot ")


def _strip_comment(line: str) -> str:
    """Drop a trailing shell comment (`` # ...`` outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def documented_commands() -> list[str]:
    """The ``ros2`` command lines of DOCS, continuation lines joined, comments dropped, in order."""
    found: list[str] = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            found += [_strip_comment(line).strip() for line in joined.splitlines()]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found += [span.strip() for span in re.findall(r"`([^`\n]*\bros2 [^`\n]*)`", prose)]
    seen, out = set(), []
    for cmd in (re.sub(r"\s+", " ", c) for c in found):
        runnable = len(cmd.split()) >= 3  # "ros2 launch" in a sentence names the tool, not a command
        if runnable and re.search(r"(^|[;&|(]\s*|do )ros2 ", cmd) and cmd not in seen:
            seen.add(cmd)
            out.append(cmd)
    return out


def test_the_documents_show_the_commands_this_test_runs():
    commands = documented_commands()
    assert LAUNCH in commands and RUN_IN_ORDER[0][0] in commands
    assert len(commands) >= 15, commands


def _default_sigint() -> None:
    """SIGINT as in a terminal's foreground job: a test run started in the background (nohup ... &, CI)
    hands its children SIGINT ignored, and `ros2 launch` would then never see the Ctrl-C it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A documented command that runs until interrupted (``ros2 topic echo``/``hz``, ``ros2 launch``)."""

    def __init__(self, command: str, env: dict[str, str], log: Path, *, exec_: bool = False):
        self.command, self.log_path = command, log
        self._log = open(log, "w", encoding="utf-8")
        shell = f"exec {command}" if exec_ else command
        self.proc = subprocess.Popen(["bash", "-c", shell], env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_sigint)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.command!r}: no {pattern!r} in its output "
                                     f"(exit {self.proc.poll()}):\n{self.output()[-3000:]}")
            time.sleep(0.1)  # a log file gives no change notification
        return self.output()

    def interrupt(self, timeout: float = 60.0) -> int:
        """SIGINT, as Ctrl-C sends it; returns the exit code."""
        code = interrupt(self.proc, timeout)
        self._log.close()
        return code


WAIT_ACTIVE = "(wait for status active)"
# Commands run one after the other, each with a check of its output: (command, expected regex).
RUN_IN_ORDER = [
    ("ros2 lifecycle get /sage/sage_irp", r"^active \[3\]"),
    ("ros2 lifecycle set /sage/sage_irp deactivate", r"Transitioning successful"),
    ("ros2 lifecycle set /sage/sage_irp activate", r"Transitioning successful"),
    ("ros2 lifecycle set /sage/sage_irp deactivate", r"Transitioning successful"),
    ("ros2 lifecycle set /sage/sage_irp cleanup", r"Transitioning successful"),  # not a doc line: leads to ...
    ("ros2 lifecycle set /sage/sage_irp configure", r"Transitioning successful"),  # ... the troubleshooting one
    (WAIT_ACTIVE, None),  # launch (autostart) activates after every successful configure
    ("ros2 service call /sage/sage_irp/reset_history std_srvs/srv/Trigger", r"success=True"),
    ("ros2 param get /sage/sage_irp llm_irp.max_tokens", r"Integer value is: 8\b"),
    ("ros2 param set /sage/sage_irp llm_irp.max_tokens 64", r"Set parameter successful"),
    ("ros2 param get /sage/sage_irp llm_irp.max_tokens", r"Integer value is: 64\b"),  # it took effect
    ('ros2 run sage_irp_ros sage_irp ask "Where is the dock?"', r"salience"),
    ('for i in 1 2 3 4 5; do ros2 run sage_irp_ros sage_irp ask "Question $i: where is the dock?"; done',
     r"(?s)(salience.*){5}"),
    (f"{LAUNCH} --show-args", r"(?s)'params_file'.*'model_path'.*'namespace'.*'log_level'.*'use_sim_time'"
                              r".*'respawn'.*'autostart'.*'sigterm_timeout'"),
]
BACKGROUND = {  # command: what its output shows once the nodes run
    "ros2 topic echo /sage/result": r'"id": "q1"',
    "ros2 topic echo /sage/salience": r"data: [0-9.]+",
    "ros2 topic hz /sage/status": r"average rate: [0-9.]+",
    "ros2 topic echo /sage/throttled": r"data: false",
}
PUBLISH = ("ros2 topic pub --once /sage/question std_msgs/String "
           "\"data: '{\\\"id\\\": \\\"q1\\\", \\\"question\\\": \\\"What is 2+2?\\\"}'\"")


def test_every_documented_ros2_command_is_run_or_has_a_reason():
    handled = {LAUNCH, PUBLISH, *BACKGROUND, *NOT_RUN, *(cmd for cmd, _ in RUN_IN_ORDER)}
    missing = [c for c in documented_commands() if c not in handled and not GUI.match(c)]
    assert not missing, f"documented ros2 commands this test neither runs nor explains: {missing}"


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.5)  # each check runs a CLI command: no event to wait on


def _run(command: str, env: dict[str, str], timeout: float = 120.0) -> str:
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{command!r} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out.stdout


def test_documented_ros2_commands_against_ros2_launch(tmp_path):
    require_ros2_cli()
    env = isolated(installed_env(), tmp_path)
    from ros_harness import START_TIMEOUT, RosTester

    # The params file path inside the aggregator command resolves (the command itself needs the package).
    aggregator_yaml = _run("echo $(ros2 pkg prefix sage_irp_ros)/share/sage_irp_ros/config/"
                           "diagnostics_aggregator.yaml", env).strip()
    assert Path(aggregator_yaml).is_file(), aggregator_yaml

    launch = Background(f"{LAUNCH} model_path:={tiny_model()} params_file:={fast_params_file(tmp_path)}", env,
                        tmp_path / "launch.log", exec_=True)
    tester = RosTester(env, "/sage")
    background: list[Background] = []
    try:
        tester.wait_ready(START_TIMEOUT)
        # A user's terminal has the ROS 2 daemon running and knowing the graph; so has this test before
        # `ros2 topic echo`/`hz`, which look the topic's type up (and give up if it is not known yet).
        _run("ros2 daemon start", env)
        topics = sorted({c.split()[3] for c in BACKGROUND})
        _wait_until(lambda: set(topics) <= set(_run("ros2 topic list", env).split()), START_TIMEOUT,
                    f"ros2 topic list to show {topics}")
        echoed = [c.split()[3] for c in BACKGROUND if c.startswith("ros2 topic echo")]
        before = {t: tester.node.count_subscribers(t) for t in echoed}
        for i, command in enumerate(BACKGROUND):
            background.append(Background(command, env, tmp_path / f"bg{i}.log"))

        def subscribed() -> bool:
            for bg in background:
                assert bg.proc.poll() is None, f"{bg.command!r} exited {bg.proc.poll()}:\n{bg.output()[-2000:]}"
            return all(tester.node.count_subscribers(t) > before[t] for t in echoed)
        tester.wait_for(subscribed, START_TIMEOUT, "the ros2 topic echo subscriptions")

        assert "publishing #1" in _run(PUBLISH, env)
        for command, expected in RUN_IN_ORDER:
            if command == WAIT_ACTIVE:
                mark = tester.status_mark()
                tester.wait_status(lambda s: s["lifecycle"] == "active", START_TIMEOUT, "active", mark)
                continue
            out = _run(command, env)
            assert re.search(expected, out, re.M), f"{command!r}: no {expected!r} in\n{out[-2000:]}"
        for bg, expected in zip(background, BACKGROUND.values()):
            bg.wait_output(expected, 60)
        assert [r["ok"] for r in tester.results] == [True] * 7, tester.results  # q1 + 1 + 5 asks
    finally:
        for bg in background:
            bg.interrupt()
        tester.close()
        subprocess.run([ros2_executable() or "ros2", "daemon", "stop"], env=env, capture_output=True, timeout=60)
        code = launch.interrupt()
    log = launch.output()
    assert code == 0, log[-3000:]
    assert log.count("process has finished cleanly") == 2, log[-3000:]
