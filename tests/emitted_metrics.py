"""The metrics the Lambda functions emit, read from their EMF code (functions/autouser-lambda/
src/metrics.rs): every (namespace, metric, dimension names, value of the Function dimension).
tests/test_template.py checks template.yaml's dashboard against them, and infra/test the CDK
construct's (it runs this file, which prints them as JSON). Standard library only.
"""

import json
import re
from pathlib import Path

LAMBDA_SOURCES = Path(__file__).resolve().parent.parent / "functions" / "autouser-lambda" / "src"


def rust_fn_body(source, name):
    """The text of `fn name(...) { ... }` in `source`, up to its closing brace at its indent."""
    match = re.search(rf"^( *)(?:pub )?fn {name}\b.*?^\1}}$", source, re.S | re.M)
    if not match:
        raise SystemExit(f"no fn {name} in the Lambda sources: update tests/test_template.py")
    return match.group(0)


def emitted_metrics():
    """Every (namespace, metric, dimension names, Function value) the functions emit, read from
    metrics.rs: the outcome line (session-start and session-end), the kind lines (every
    function; dimension Kind too), the discovery line and the reaper line."""
    source = (LAMBDA_SOURCES / "metrics.rs").read_text()
    namespace = re.search(r'pub const NAMESPACE: &str = "([^"]+)";', source).group(1)
    sessions = re.findall(r'=> "([a-z-]+)"', rust_fn_body((LAMBDA_SOURCES / "input.rs").read_text(), "name"))
    reaper = re.search(r'pub const FUNCTION_NAME: &str = "([a-z-]+)";',
                       (LAMBDA_SOURCES / "reaper_totals.rs").read_text()).group(1)
    discovery_line = rust_fn_body(source, "discovery_line")
    discovery = re.search(r'counts_line\("([a-z-]+)"', discovery_line).group(1)

    def dimensions(body):
        return tuple(re.findall(r'"(\w+)"', re.search(r'"Dimensions": \[\[([^\]]*)\]\]', body).group(1)))

    emitted = set()
    outcome = rust_fn_body(source, "outcome_line")
    outcome_metrics = re.findall(r'=> "(\w+)"', rust_fn_body(source, "metric_for"))
    outcome_metrics += [m for m in re.findall(r'\{"Name": "(\w+)"', outcome)]
    for metric in outcome_metrics:
        for function in sessions:
            emitted.add((namespace, metric, dimensions(outcome), function))
    kind = rust_fn_body(source, "kind_line")
    # kind_line(function.name(), …) of a session function; kind_line(function, …) of any.
    for caller, metric in re.findall(r'kind_line\((\w+(?:\.name\(\))?), "(\w+)"', source):
        for function in sessions if caller.endswith(".name()") else sessions + [reaper, discovery]:
            emitted.add((namespace, metric, dimensions(kind), function))
    config_failure = rust_fn_body(source, "config_failure_line")
    for metric in re.findall(r'\{"Name": "(\w+)"', config_failure):
        for function in sessions + [reaper, discovery]:
            emitted.add((namespace, metric, dimensions(config_failure), function))
    counts = dimensions(rust_fn_body(source, "counts_line"))
    for body, function in ((discovery_line, discovery), (rust_fn_body(source, "reaper_line"), reaper)):
        for metric in re.findall(r'\("(\w+)", (?:report|totals)', body):
            emitted.add((namespace, metric, counts, function))
    if len(emitted) < 20 or not sessions:
        raise SystemExit(f"read too few metrics from metrics.rs ({sorted(emitted)}): update tests/test_template.py")
    return emitted



if __name__ == "__main__":
    print(json.dumps(sorted(emitted_metrics())))
