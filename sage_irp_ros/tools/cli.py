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

"""``sage_irp``: run the nodes in one process, ask a question, export salient memory.

    sage_irp run [--demo] [--once] [--namespace sage] [--model-path P] [--no-diagnostics] [--ros-args ...]
    sage_irp ask "text" [--id ID] [--conversation C] [--choice A --choice B ... | --schema FILE.json]
                 [--min-confidence X] [--timeout S] [--json] [--namespace sage]
    sage_irp export-salient [--db FILE] [--since UNIX_TIME] [--conversation C] [--min-salience X] [--out F]
    sage_irp monitor [--namespace sage] [--once] [--timeout S]
    sage_irp plot [--db FILE] [--out session.png] [--since UNIX_TIME] [--conversation C] [--reliability F.jsonl]
    sage_irp doctor
    sage_irp cache list|clear|warm [--dir DIR] [--config FILE]

``ask`` without ``--conversation`` asks the question on its own (no history, and it leaves none); the
same ``--conversation`` id on several asks makes them one dialogue.

``run`` is the one-process equivalent of ``ros2 launch sage_irp_ros edge.launch.py``: the same nodes,
the same default parameters file (config/edge.yaml), standard ``--ros-args`` (params files, remaps).
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Sequence

from sage_irp_ros.results import Result

DEMO_QUESTIONS = (
    "What is the difference between knowledge and understanding?",
    "Are you aware of this conversation?",
    "What is 2+2?",
    "When you generate a response, are you discovering it or creating it?",
    "How does compression affect meaning?",
)
DEMO_CONVERSATION = "demo"  # the report asked its five questions as one dialogue


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index("--ros-args"):] if "--ros-args" in argv else []
    ours = argv[:len(argv) - len(ros_args)]
    args = _parser().parse_args(ours)
    try:
        return args.func(args, ros_args)
    except KeyboardInterrupt:  # Ctrl-C while asking/monitoring: a quiet, conventional exit
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage_irp", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the IRP and diagnostics nodes in one process")
    run.add_argument("--namespace", default="sage")
    run.add_argument("--model-path", default="", help="local HF folder or .gguf (default: embedded SmolLM2)")
    run.add_argument("--remote-url", default="", metavar="URL",
                     help="generate candidates on this OpenAI-compatible server (vLLM, llama.cpp server); "
                          "sets remote.url (default: the on-board model)")
    run.add_argument("--remote-model", default="", metavar="NAME",
                     help="with --remote-url: the served model's name (remote.model; default: the first listed)")
    run.add_argument("--remote-fallback", choices=("local", "none"),
                     help="with --remote-url: remote.fallback (local: on-board model while the server is down; "
                          "none: load no model)")
    run.add_argument("--demo", action="store_true",
                     help=f"ask the research report's five demo questions in conversation '{DEMO_CONVERSATION}'")
    run.add_argument("--once", action="store_true", help="with --demo: exit after the demo")
    run.add_argument("--no-diagnostics", action="store_true", help="run only the IRP node")
    run.set_defaults(func=_run)
    ask = sub.add_parser("ask", help="ask the running node a question and print the result")
    ask.add_argument("question")
    ask.add_argument("--id")
    ask.add_argument("--conversation", help="conversation id: asks with the same id share their recent "
                                            "exchanges as context (default: none, no history)")
    ask.add_argument("--choice", action="append", dest="choices", metavar="OPTION",
                     help="an option the answer must be (repeat: --choice yes --choice no)")
    ask.add_argument("--schema", metavar="FILE.json", help="a JSON Schema file: the answer is JSON valid under it")
    ask.add_argument("--tools", metavar="FILE.json", help="the robot's skills in the OpenAI function format (a "
                                                          "list of tools): the answer is one call of one of them")
    ask.add_argument("--tool-choice", metavar="NAME", help="with --tools: required (default), auto (the model "
                                                           "may answer in text) or a tool's name (call that one)")
    ask.add_argument("--min-confidence", type=float, metavar="X",
                     help="below this confidence (0..1) the result says confident: false")
    ask.add_argument("--timeout", type=float, default=120.0)
    ask.add_argument("--json", action="store_true", help="print the whole result JSON")
    ask.add_argument("--namespace", default="sage")
    ask.set_defaults(func=_ask)
    export = sub.add_parser("export-salient", help="write salient exchanges as JSONL (for fine-tuning)")
    export.add_argument("--db", default="", help="SQLite file (default: memory.db_path default)")
    export.add_argument("--since", type=float, help="unix time")
    export.add_argument("--conversation", help="only this conversation ('' = questions asked without one)")
    export.add_argument("--min-salience", type=float)
    export.add_argument("--out", default="-", help="output file, '-' = stdout")
    export.set_defaults(func=_export)
    monitor = sub.add_parser("monitor", help="live terminal view of status, answers and diagnostics")
    monitor.add_argument("--namespace", default="sage")
    monitor.add_argument("--once", action="store_true", help="print one frame once the status arrives, exit 0")
    monitor.add_argument("--timeout", type=float, default=10.0, help="with --once: longest wait for the status")
    monitor.set_defaults(func=_monitor)
    plot = sub.add_parser("plot", help="PNG of latency and salience over a session, from the SQLite store")
    plot.add_argument("--db", default="", help="SQLite file (default: memory.db_path default)")
    plot.add_argument("--out", default="session.png")
    plot.add_argument("--since", type=float, help="unix time")
    plot.add_argument("--conversation", help="only this conversation ('' = questions asked without one)")
    plot.add_argument("--reliability", metavar="FILE.jsonl",
                      help="instead: the reliability diagram (confidence bins vs accuracy) of JSON lines with "
                           "'confidence' and 'right'")
    plot.set_defaults(func=_plot)
    doctor = sub.add_parser("doctor", help="print Python, torch/CUDA, transformers, peft, rclpy/distro, jtop, "
                                           "model cache; exit 1 when something required is missing or too old")
    doctor.set_defaults(func=_doctor)
    cache = sub.add_parser("cache", help="list or clear the converted-model cache (GGUF conversions); warm: "
                                         "load the model and compile its decode step ahead of time")
    cache.add_argument("action", choices=("list", "clear", "warm"))
    cache.add_argument("--dir", default="", help="cache folder (default: $XDG_CACHE_HOME/sage_irp_ros)")
    cache.add_argument("--config", default="", help="with warm: the configuration whose model and shapes to "
                                                    "compile (default: the installed config/edge.yaml)")
    cache.set_defaults(func=_cache)
    return parser


def _run(args: argparse.Namespace, ros_args: list[str]) -> int:
    import rclpy
    import rclpy.logging

    from sage_irp_ros.ros.client import SageClient
    from sage_irp_ros.config.settings import ConfigError
    from sage_irp_ros.ros.irp_node import IrpNode
    from sage_irp_ros.ros.spin import init_ros, spin_nodes
    from sage_irp_ros.config.resources import config_file

    if "--params-file" not in ros_args:  # first, so the user's own -p overrides win
        ros_args = ["--ros-args", "--params-file", str(config_file("edge.yaml")), *ros_args]
    if args.model_path:
        ros_args = [*ros_args, "--ros-args", "-p", f"model.path:={args.model_path}"]
    for key, value in (("remote.url", args.remote_url), ("remote.model", args.remote_model),
                       ("remote.fallback", args.remote_fallback)):
        if value:
            ros_args = [*ros_args, "--ros-args", "-p", f"{key}:={value}"]
    init_ros(["sage_irp", *ros_args])
    try:
        nodes = [IrpNode(namespace=args.namespace)]
        if not args.no_diagnostics:
            from sage_irp_ros.ros.diagnostics_node import DiagnosticsNode
            nodes.append(DiagnosticsNode(namespace=args.namespace))
    except ConfigError as exc:  # to the ROS logger, as the nodes' own entry points do
        rclpy.logging.get_logger("sage_irp").error(str(exc))
        rclpy.try_shutdown()
        return 2
    stop = threading.Event()
    if args.demo:
        demo_node = rclpy.create_node("sage_irp_demo", namespace=args.namespace)
        nodes.append(demo_node)
        client = SageClient(demo_node, namespace=nodes[0].get_namespace())
        threading.Thread(target=_demo, args=(client, stop if args.once else None), daemon=True).start()
    return spin_nodes(nodes, stop)


def _demo(client, stop: threading.Event | None) -> None:
    """Ask the five demo questions through the real topics once the node is ready, as one dialogue."""
    if not client.wait_until_ready(600):
        print("[demo] the IRP node did not become active", flush=True)
    else:
        print(f"[demo] model {client.status.get('model')} ready on {client.status.get('device')}; "
              f"asking in conversation '{DEMO_CONVERSATION}'", flush=True)
        for n, question in enumerate(DEMO_QUESTIONS, start=1):
            result = client.ask(question, timeout=600, conversation=DEMO_CONVERSATION)
            print(f"\n[demo {n}/5] Q: {question}", flush=True)
            print(_format(result), flush=True)
    if stop is not None:
        stop.set()


def _format(result: Result) -> str:
    import json

    if not result.ok or result.snarc is None or result.irp is None:
        return f"ERROR {result.error_code}: {result.error_message}"
    snarc, timing, irp = result.snarc, result.timing, result.irp
    energy = f"{irp.best_energy:.3f}" if irp.best_energy is not None else "-"
    lines = ""
    if result.probabilities is not None:
        lines += "   options: " + ", ".join(f"{o} {p:.2f}" for o, p in result.probabilities.items()) + "\n"
    if result.json is not None:
        lines += f"   json: {json.dumps(result.json, ensure_ascii=False)}\n"
    if result.tool_call is not None:
        call = result.tool_call
        lines += f"   call: {call['name']} {json.dumps(call['arguments'], ensure_ascii=False)}\n"
    if result.confidence is not None:
        lines += (f"   confidence {result.confidence:.2f}"
                  f"{'' if result.confident in (True, None) else ' (NOT confident: under min_confidence)'}\n")
    return (f"A: {result.answer}\n{lines}"
            f"   salience {snarc.total:.3f} ({'salient' if snarc.salient else 'not salient'}: "
            f"S {snarc.surprise:.2f} N {snarc.novelty:.2f} A {snarc.arousal:.2f} "
            f"R {snarc.reward:.2f} C {snarc.conflict:.2f})\n"
            f"   {timing.total_s:.2f} s total, {timing.tokens} tokens at {timing.tokens_per_s:.1f}/s, "
            f"{len(irp.energies)} candidates, best energy {energy}, halt: {irp.halt_reason}")


def _ask(args: argparse.Namespace, ros_args: list[str]) -> int:
    import rclpy

    from sage_irp_ros.ros.client import SageClient, spinning

    try:
        schema = _read_json(args.schema, "the schema")
        tools = _read_json(args.tools, "the tools")
    except ValueError as exc:
        print(f"sage_irp ask: {exc}", file=sys.stderr)
        return 2
    if isinstance(tools, dict) and "tools" in tools:  # {"tools": [...]}, as in a chat completions request
        tools = tools["tools"]
    tool_choice = args.tool_choice
    if tool_choice is not None and tool_choice not in ("required", "auto"):
        tool_choice = {"name": tool_choice}
    rclpy.init(args=["sage_irp", *ros_args])
    node = rclpy.create_node("sage_irp_ask")
    try:
        with spinning(node):
            client = SageClient(node, namespace=args.namespace)
            result = client.ask(args.question, timeout=args.timeout, wait_ready=True, id=args.id,
                                conversation=args.conversation, choices=args.choices, json_schema=schema,
                                tools=tools, tool_choice=tool_choice, min_confidence=args.min_confidence)
    except TimeoutError as exc:
        print(f"sage_irp ask: {exc}", file=sys.stderr)
        return 3
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(result.to_json(indent=2) if args.json else _format(result))
    return 0 if result.ok else 1


def _read_json(path: str | None, what: str):
    """The JSON in the file ``path`` (None without one); ValueError saying which file could not be read."""
    if not path:
        return None
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from None


def _export(args: argparse.Namespace, ros_args: list[str]) -> int:
    from sage_irp_ros.salience.memory_store import MemoryStore, default_db_path

    path = args.db or default_db_path()
    store = MemoryStore(path)
    filters = {"since": args.since, "conversation": args.conversation, "min_salience": args.min_salience}
    try:
        count = store.export_jsonl(sys.stdout if args.out == "-" else args.out, **filters)
    except Exception as exc:
        print(f"sage_irp export-salient: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"exported {count} salient exchanges from {path}", file=sys.stderr)
    return 0


def _monitor(args: argparse.Namespace, ros_args: list[str]) -> int:
    try:
        from sage_irp_ros.tools.monitor import run_monitor
    except ImportError as exc:
        print(f"sage_irp monitor needs rich: pip install rich ({exc})", file=sys.stderr)
        return 1
    return run_monitor(args.namespace, once=args.once, timeout=args.timeout, ros_args=ros_args)


def _plot(args: argparse.Namespace, ros_args: list[str]) -> int:
    from sage_irp_ros.salience.memory_store import default_db_path

    try:
        from sage_irp_ros.tools.plot import plot_session
    except ImportError as exc:
        print(f"sage_irp plot needs matplotlib: pip install matplotlib ({exc})", file=sys.stderr)
        return 1
    if args.reliability:
        from sage_irp_ros.tools.plot import plot_reliability, read_labelled

        confidence, right = read_labelled(args.reliability)
        if not confidence:
            print(f"sage_irp plot: no lines with 'confidence' and 'right' in {args.reliability}", file=sys.stderr)
            return 1
        plot_reliability(confidence, right, args.out, f"{len(confidence)} answers")
        print(f"plotted the reliability of {len(confidence)} answers to {args.out}", file=sys.stderr)
        return 0
    path = args.db or default_db_path()
    try:
        count = plot_session(path, args.out, since=args.since, conversation=args.conversation)
    except Exception as exc:
        print(f"sage_irp plot: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    if not count:
        print(f"sage_irp plot: no exchanges in {path} (with these filters): nothing plotted", file=sys.stderr)
        return 1
    print(f"plotted {count} exchanges from {path} to {args.out}", file=sys.stderr)
    return 0


def _doctor(args: argparse.Namespace, ros_args: list[str]) -> int:
    from sage_irp_ros.tools.doctor import run_doctor

    return run_doctor()


def _cache(args: argparse.Namespace, ros_args: list[str]) -> int:
    from pathlib import Path

    from sage_irp_ros.weights.embedded_model import default_cache_dir
    from sage_irp_ros.weights.int4_loader import folder_format
    from sage_irp_ros.weights.cache import clear, entries

    folder = Path(args.dir).expanduser() if args.dir else default_cache_dir()
    if args.action == "warm":
        return _cache_warm(args, folder)
    if args.action == "clear":
        count, freed = clear(folder)
        print(f"removed {count} cached models ({freed / 2**20:.0f} MB) from {folder}")
        return 0
    found = entries(folder)
    for path, size in found:
        print(f"{size / 2**20:8.0f} MB  {folder_format(path):8s}  {path}")
    print(f"{len(found)} cached models, {sum(s for _, s in found) / 2**20:.0f} MB in {folder}")
    return 0


def _cache_warm(args: argparse.Namespace, folder) -> int:
    """Load the configured model and compile its decode step for the engine's usual request shapes."""
    import dataclasses
    import time

    from sage_irp_ros.decoding import compiled_step
    from sage_irp_ros.config.settings import ConfigError, SageConfig
    from sage_irp_ros.irp.engine import IRPEngine
    from sage_irp_ros.weights.loader import apply_power_mode, load_model
    from sage_irp_ros.config.resources import config_file

    try:
        cfg = SageConfig.from_yaml(args.config or config_file("edge.yaml"))
    except ConfigError as exc:
        print(f"sage_irp cache warm: {exc}", file=sys.stderr)
        return 2
    model_cfg = cfg.model if not args.dir else dataclasses.replace(cfg.model, cache_dir=str(folder))
    compiled_step.use_compile_cache(folder / "compile")
    apply_power_mode(cfg.model.power_mode)
    lm = load_model(model_cfg, lambda message: print(message, file=sys.stderr))
    shapes = [(IRPEngine.usual_rows(cfg.llm_irp), cfg.llm_irp.max_tokens)]
    if cfg.throttle.enabled:
        shapes.append((1, min(cfg.throttle.max_tokens, cfg.llm_irp.max_tokens)))
    start = time.monotonic()
    try:
        step = compiled_step.warm(lm, shapes)
    except RuntimeError as exc:
        print(f"sage_irp cache warm: not compiled: {exc}", file=sys.stderr)
        return 1
    for (rows, length), seconds in sorted(step.compile_s.items()):
        print(f"compiled the decode step for {rows} rows x {length} positions in {seconds:.1f} s")
    print(f"decode step ready in {time.monotonic() - start:.1f} s; kernels cached in "
          f"{compiled_step.use_compile_cache()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
