"""Load tests for a modelstack deployment: Locust users, an SLO gate, a step-load knee finder, reports.

Run against the local stack (``make start`` first) or any URL; each run gets a folder
``reports/loadtest-<timestamp>/`` with Locust's CSV and HTML and our ``report.html`` with plots::

    make loadtest HOST=http://127.0.0.1:8080 USERS=20 DURATION=60s
    python -m loadtests.run --host https://models.example.com --users 50 --duration 5m --slo-p95-ms 150
    python -m loadtests.run --step --users 60 --think-min 0 --think-max 0 --slo-p95-ms 20   # find the knee

The same with Locust alone (then ``python -m loadtests.report DIR`` draws the report)::

    locust -f loadtests/locustfile.py --headless -H http://127.0.0.1:8080 -u 20 -r 20 -t 60s \\
        --csv reports/manual/locust --html reports/manual/locust.html

Modules: ``locustfile`` (users, options, SLO gate), ``stepload`` (the step shape),
``payloads`` (request bodies from real digits), ``recorder`` (latency and Server-Timing
histograms), ``slo`` (thresholds and the knee), ``report`` (plots, HTML, Markdown), ``run`` (the CLI).
"""

RESULTS_FILE = "loadtest.json"  # the locustfile writes it next to Locust's CSV files; report.py reads it
