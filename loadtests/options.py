"""The locustfile's own command line options (each also an environment variable), and their parsing.

Kept apart from the locustfile because importing Locust monkey-patches the whole process
with gevent; the test suite and the report read these without that.
"""

from __future__ import annotations

from .slo import Slo

TASK_NAMES = ("predict", "oip-json", "oip-binary", "pages")
DEFAULT_MIX = "predict=5,oip-json=2,oip-binary=2,pages=1"


def add_options(parser) -> None:
    """Add the options to Locust's parser (``init_command_line_parser``)."""
    group = parser.add_argument_group("modelstack")
    group.add_argument("--model", default="digits", env_var="LOCUST_MODEL",
                       help="Model to call (a digits-like model: 8x8 images, input 'input' FP32 [N,64])")
    group.add_argument("--task-mix", default=DEFAULT_MIX, env_var="LOCUST_TASK_MIX",
                       help=f"Task weights, e.g. '{DEFAULT_MIX}'; 0 leaves a task out. pages opens / and "
                       "the model's page (two requests); the others are one request each")
    group.add_argument("--think-min", type=float, default=0.1, env_var="LOCUST_THINK_MIN",
                       help="Shortest pause of a user between tasks, in seconds")
    group.add_argument("--think-max", type=float, default=1.0, env_var="LOCUST_THINK_MAX",
                       help="Longest pause; 0 and 0 make each user a closed loop (capacity runs)")
    group.add_argument("--slo-p95-ms", type=float, default=200.0, env_var="LOCUST_SLO_P95_MS",
                       help="SLO: 95th percentile latency limit in ms (also the step shape's target)")
    group.add_argument("--slo-p99-ms", type=float, default=500.0, env_var="LOCUST_SLO_P99_MS",
                       help="SLO: 99th percentile latency limit in ms")
    group.add_argument("--slo-max-failure-ratio", type=float, default=0.01, env_var="LOCUST_SLO_MAX_FAILURE_RATIO",
                       help="SLO: largest acceptable share of failed requests (0..1)")
    group.add_argument("--max-requests", type=int, default=1_000_000, env_var="LOCUST_MAX_REQUESTS",
                       help="Stop the run after this many requests")
    group.add_argument("--preflight-timeout", type=float, default=5.0, env_var="LOCUST_PREFLIGHT_TIMEOUT",
                       help="Seconds the pre-flight GET /readyz may take before the run is refused")


def parse_mix(text: str) -> dict[str, int]:
    """``"predict=5,pages=1"`` as weights per task; unknown names and bad numbers are errors."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, raw = (part.strip() for part in item.partition("="))
        if name not in TASK_NAMES:
            raise ValueError(f"--task-mix: unknown task '{name}'; the tasks are {', '.join(TASK_NAMES)}")
        if not raw.isdigit():
            raise ValueError(f"--task-mix: the weight of '{name}' must be a whole number, got '{raw}'")
        weights[name] = int(raw)
    if not any(weights.values()):
        raise ValueError("--task-mix: give at least one task a weight above 0")
    return weights


def slo_of(options) -> Slo:
    return Slo(options.slo_p95_ms, options.slo_p99_ms, options.slo_max_failure_ratio)
