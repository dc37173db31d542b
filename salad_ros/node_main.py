"""The ``loop_closure_node`` program: process lifetime around :class:`~salad_ros.node.LoopClosureNode`.

``rclpy.init`` with rcl's command-line refusals as one line (exit 2), SIGINT/SIGTERM handling that
lets the shutdown save finish, and a fast exit once everything is shut down in order.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.signals import SignalHandlerOptions

from .node import LoopClosureNode, StartupError
from .params import DEFAULT_NODE_NAME, one_line


class _ShutdownRequest:
    """SIGINT/SIGTERM handler: the first signal asks the spin loop to stop (so shutdown runs
    with ROS still up: final logs reach /rosout, the database is saved); before the node exists
    it interrupts right away (there is nothing to save yet).

    Once shutdown has begun, further signals (a second Ctrl-C, launch's SIGTERM after SIGINT)
    never interrupt it: an interrupted save loses the session's keyframes. They only print that
    the node is finishing; SIGKILL still ends it at once.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.armed = False
        self.busy_message = b""

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.armed:
            raise KeyboardInterrupt
        if self.event.is_set():
            # os.write, not print: a handler may run while the main thread is inside a print
            os.write(2, self.busy_message)
            return
        self.event.set()


def _rcl_message(exc: BaseException) -> str:
    """rcl's error as one line, without the C source locations it appends (", at file.c:123")."""
    return re.sub(r",? at [^\s,]+:\d+", "", one_line(exc)).strip()


def _init_ros(args: list[str]) -> None:
    """``rclpy.init`` with rcl's refusals of the command line (a missing or invalid params file, a
    malformed ``-p``) as one :class:`StartupError` line instead of rcl's log line and a traceback."""
    # rcl logs "Failed to parse global arguments" itself before raising: keep it quiet meanwhile
    before = rclpy.logging.get_logger_effective_level("rcl")
    rclpy.logging.set_logger_level("rcl", rclpy.logging.LoggingSeverity.FATAL)
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except _rclpy.RCLError as exc:
        raise StartupError(_rcl_message(exc)) from exc
    finally:
        if rclpy.logging.get_logger_level("rcl") == rclpy.logging.LoggingSeverity.FATAL:  # not set by --log-level
            rclpy.logging.set_logger_level("rcl", before)


def main(argv: list[str] | None = None, *, fast_exit: bool | None = None) -> int:
    """``loop_closure_node [--ros-args ...]``: run until SIGINT/SIGTERM; 0 on a clean exit,
    2 when the configuration is refused.

    Run as a program (``argv`` None, or ``fast_exit=True``) the process ends with ``os._exit``
    once the orderly shutdown is done (worker stopped, database saved, node destroyed, ROS shut
    down): interpreter finalisation of torch, faiss and DDS adds nothing but takes 1-4 s on a
    loaded machine, which would eat the shutdown budget of launch and systemd.
    """
    if fast_exit is None:
        fast_exit = argv is None
    args = list(sys.argv if argv is None else argv)
    try:
        _init_ros(args)
    except StartupError as exc:
        rclpy.logging.get_logger(DEFAULT_NODE_NAME).fatal(str(exc))
        if fast_exit:
            sys.stderr.flush()
            os._exit(2)
        return 2
    stop = _ShutdownRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    node: LoopClosureNode | None = None
    executor: SingleThreadedExecutor | None = None
    code = 0
    try:
        node = LoopClosureNode()
        saving = f" (saving the database to {node.cfg.node.database_path})" if node.cfg.node.save_on_shutdown else ""
        stop.busy_message = (f"[WARN] [{node.get_name()}]: signal received while shutting down{saving}: "
                             "please wait (SIGKILL aborts)\n").encode()
        stop.armed = True
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)  # short timeout: signals are handled between spins
    except StartupError as exc:
        rclpy.logging.get_logger(DEFAULT_NODE_NAME).fatal(str(exc))
        code = 2
    except _rclpy.RCLError as exc:  # e.g. a remapping rcl refuses when it creates the node
        rclpy.logging.get_logger(DEFAULT_NODE_NAME).fatal(_rcl_message(exc))
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()  # stops the worker and saves if configured
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
        rclpy.get_default_context().destroy()  # free the DDS participant before a fast exit
    if fast_exit:
        # our handler stays: a signal between here and the exit must not turn exit 0 into -15
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
