"""Step load: add users step by step until the SLO breaks, then report the capacity knee.

    locust -f loadtests/locustfile.py,loadtests/stepload.py --headless -H http://127.0.0.1:8080 \\
        --think-min 0 --think-max 0 --slo-p95-ms 10 --step-users 2 --step-time 10 --step-max-users 40 \\
        --csv reports/knee/locust --html reports/knee/locust.html

Each step holds its user count for ``--step-time`` seconds and is measured over its last
two thirds (the first third lets new users connect and the queues settle). A step is within
the SLO when its p95 is at most ``--slo-p95-ms`` and its failure ratio at most
``--slo-max-failure-ratio``. The run ends at the first step that is not, at
``--step-max-users``, or when the next step would not fit in ``-t``. The knee is the
busiest step within the SLO: the requests per second this deployment sustains at the p95
target. The exit code is 0 when there is a knee, 1 when even the first step broke the SLO.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

from locust import LoadTestShape, events
from locust.runners import MasterRunner, WORKER_REPORT_INTERVAL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.recorder import RECORDER  # noqa: E402
from loadtests.options import slo_of  # noqa: E402
from loadtests.slo import Step, knee  # noqa: E402

logger = logging.getLogger("loadtest")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("step load")
    group.add_argument("--step-users", type=int, default=2, env_var="LOCUST_STEP_USERS",
                       help="Users added per step (also the first step's users)")
    group.add_argument("--step-time", type=float, default=10.0, env_var="LOCUST_STEP_TIME",
                       help="Seconds each step lasts")
    group.add_argument("--step-max-users", type=int, default=100, env_var="LOCUST_STEP_MAX_USERS",
                       help="Stop after the step with this many users even if the SLO still holds")


class StepLoadShape(LoadTestShape):
    """Raise users by ``--step-users`` every ``--step-time`` seconds until the SLO breaks."""

    use_common_options = True  # reads -t as its time limit (-u and -r do not apply)

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self.users = 0
        self.step_started = 0.0

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        now = time.time()
        if not self.users:
            return self._next_step(options, now)
        if now - self.step_started < options.step_time:
            return self.users, options.step_users
        step = self._measure(options, now)
        self.steps.append(step)
        logger.info("step %d: %d users, %.0f req/s, p95 %.3g ms, p99 %.3g ms, failures %.2f%%: %s",
                    len(self.steps), step.users, step.rps, step.p95, step.p99, 100 * step.failure_ratio,
                    "within the SLO" if step.within_slo else "SLO broken")
        if not step.within_slo:
            return self._finish("the SLO broke")
        if self.users + options.step_users > options.step_max_users:
            return self._finish(f"--step-max-users {options.step_max_users} reached with the SLO still held")
        if options.run_time and self.get_run_time() + options.step_time > options.run_time:
            return self._finish(f"the next step would not fit in --run-time {options.run_time} s")
        return self._next_step(options, now)

    def _next_step(self, options, now: float) -> tuple[int, float]:
        self.users += options.step_users
        self.step_started = now
        return self.users, options.step_users  # all of a step's users start within a second

    def _measure(self, options, now: float) -> Step:
        # A master hears from its workers every few seconds: leave out what may not have arrived.
        lag = WORKER_REPORT_INTERVAL if isinstance(self.runner, MasterRunner) else 0
        start = math.ceil(self.step_started + options.step_time / 3)
        end = max(start + 1, math.floor(now - lag))
        return Step.of(self.users, RECORDER.window(start, end), slo_of(options))

    def _finish(self, reason: str) -> None:
        best = knee(self.steps)
        if best is None:
            logger.info("step load ended (%s): even %d users broke the SLO; no knee", reason, self.steps[0].users)
        else:
            logger.info("step load ended (%s); capacity knee: %.0f req/s at %d users (p95 %.3g ms)",
                        reason, best.rps, best.users, best.p95)
        return None
