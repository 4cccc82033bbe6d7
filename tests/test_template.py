"""Checks template.yaml beyond cfn-lint, against a local AWS emulator (moto):

- every EventBridge rule's pattern matches exactly the sample events it should. moto does not
  implement TestEventPattern, so each rule is created on a bus of the emulator with an SQS
  queue as its target, each sample is put on the bus, and the queues tell which rules matched
  (moto's own event matching, which handles `$or`);
- every rule target retries and has a dead-letter queue;
- the session rules deliver to an SQS queue that a function consumes with partial batch
  responses; the queue's visibility timeout is at least six times the function's timeout, it
  retries each event for hours (maxReceiveCount x visibility timeout) before its dead-letter
  queue, which alarms; only the rule (and the function's own failed async invokes) may send
  to it. In moto: an event put on the bus reaches the queue, and once received maxReceiveCount
  times it lands in the dead-letter queue;
- every function's asynchronous invokes have an EventInvokeConfig with an on-failure
  destination: the session queue for session functions, the dead-letter queue for the others;
- the bus lets only the proxies' principals put the session detail-types;
- each function has its own role; every RDS, Secrets Manager and EventBridge action granted
  is an SDK call the Rust code makes (rds:ListTagsForResource is none);
- every function has an Errors alarm, every dead-letter queue an alarm, and every alarm on a
  pg-autouser metric names a metric and dimension that the functions emit (metrics.rs);
- the dashboard: every metric of its widgets (namespace, name, dimensions, and the Function
  dimension's value; SEARCH expressions too) is one the functions emit, as read from
  metrics.rs, or a dead-letter queue's depth; it shows every alarm of the template, each
  dead-letter queue, latency p50 and p99, and every metric of the outcomes, the reaper and
  discovery;
- no IAM statement has a wildcard action or a bare "*" resource;
- session-start and session-end reserve SessionFunctionConcurrency each (0: unreserved), whose
  default is the one preflight sizes the admin's CONNECTION LIMIT from (preflight.rs).

Run with the project's virtualenv: .deps/venv/bin/python tests/test_template.py
Exits non-zero, naming each problem, when a check fails.
"""

import contextlib
import json
import re
import socket
import sys
from pathlib import Path

import boto3
from cfnlint.decode import cfn_yaml
from moto.server import ThreadedMotoServer

from emitted_metrics import emitted_metrics

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
METRICS_SOURCE = ROOT / "functions" / "autouser-lambda" / "src" / "metrics.rs"
RUST_SOURCES = ROOT / "functions"

# Session rule -> (its function, how long its events must be retried before the dead-letter
# queue, in seconds). Ends lock users: they outlast the longest regional outages on record
# (about 15 hours). A start older than 6 hours is for a connection the proxy gave up long ago.
SESSION_RULES = {
    "SessionStartedRule": ("SessionStartFunction", 6 * 3600),
    "SessionEndedRule": ("SessionEndFunction", 24 * 3600),
}
SESSION_DETAIL_TYPES = {"Database Session Started", "Database Session Ended"}


def session_event(source, detail_type):
    return {
        "id": "1", "account": "123456789012", "region": "us-east-1", "time": "2026-11-28T00:00:00Z",
        "resources": [], "source": source, "detail-type": detail_type,
        "detail": {"session_id": "s1", "user": "alice", "database": "orders", "db_name": "app"},
    }


def rds_event(detail_type, detail):
    return {
        "id": "2", "account": "123456789012", "region": "us-east-1", "time": "2026-11-28T00:00:00Z",
        "resources": [], "source": "aws.rds", "detail-type": detail_type, "detail": detail,
    }


def cloudtrail(event_source, event_name):
    source = "aws." + event_source.split(".")[0]
    event = rds_event("AWS API Call via CloudTrail", {
        "eventSource": event_source, "eventName": event_name,
        "requestParameters": {"resourceName": "arn:aws:rds:us-east-1:123456789012:db:orders"},
    })
    event["source"] = source
    return event


# (description, event, the rules it must match; every other rule must not match it)
SAMPLES = [
    ("a session start", session_event("autouser", "Database Session Started"), {"SessionStartedRule"}),
    ("a session end", session_event("autouser", "Database Session Ended"), {"SessionEndedRule"}),
    ("a session start from another source", session_event("someone-else", "Database Session Started"), set()),
    ("an audit event (no loop)", session_event("autouser.audit", "Database User Activated"), set()),
    ("a discovery report", session_event("autouser.audit", "Database Ready"), set()),
    ("an RDS instance created", rds_event("RDS DB Instance Event", {"EventID": "RDS-EVENT-0005"}), {"RdsChangeRule"}),
    ("an RDS instance rebooted", rds_event("RDS DB Instance Event", {"EventID": "RDS-EVENT-0006"}), set()),
    ("an Aurora cluster created", rds_event("RDS DB Cluster Event", {"EventID": "RDS-EVENT-0170"}), {"RdsChangeRule"}),
    ("RDS tags removed", cloudtrail("rds.amazonaws.com", "RemoveTagsFromResource"), {"RdsChangeRule"}),
    ("RDS tags added", cloudtrail("rds.amazonaws.com", "AddTagsToResource"), {"RdsChangeRule"}),
    ("an RDS snapshot taken", cloudtrail("rds.amazonaws.com", "CreateDBSnapshot"), set()),
    ("EC2 tags added", cloudtrail("ec2.amazonaws.com", "CreateTags"), set()),
]


def resolve(node, parameters):
    """Replaces {"Ref": <parameter>} by the parameter's default, recursively."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in parameters:
            return parameters[node["Ref"]].get("Default")
        return {key: resolve(value, parameters) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, parameters) for item in node]
    return node


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto():
    """A moto server for the duration; yields a client factory for it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield lambda service: boto3.client(
            service, region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
    finally:
        server.stop()


def check_patterns(template, problems):
    parameters = template.get("Parameters", {})
    rules = {
        name: resolve(resource["Properties"]["EventPattern"], parameters)
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Events::Rule" and "EventPattern" in resource["Properties"]
    }
    if not rules:
        problems.append("no rule with an event pattern")
    with moto() as client:
        events, sqs = client("events"), client("sqs")
        events.create_event_bus(Name="patterns")
        queues = {}
        for name, pattern in rules.items():
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=name, EventBusName="patterns", EventPattern=json.dumps(pattern))
            events.put_targets(Rule=name, EventBusName="patterns", Targets=[{"Id": "queue", "Arn": arn}])
            queues[name] = url
        for description, event, expected in SAMPLES:
            events.put_events(Entries=[{
                "EventBusName": "patterns", "Source": event["source"], "DetailType": event["detail-type"],
                "Detail": json.dumps(event["detail"]),
            }])
            matched = set()
            for name, url in queues.items():
                messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                for message in messages:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                if messages:
                    matched.add(name)
            if matched != expected:
                problems.append(f"{description}: matched {sorted(matched)}, expected {sorted(expected)}")
            else:
                print(f"ok: {description} -> {sorted(matched) or 'no rule'}")


def check_targets(template, problems):
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Events::Rule":
            continue
        for target in resource["Properties"]["Targets"]:
            if "RetryPolicy" not in target or "DeadLetterConfig" not in target:
                problems.append(f"{name}: target {target['Id']} lacks a retry policy or a dead-letter queue")


def check_alarms(template, problems):
    resources = template["Resources"]
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]

    def alarmed(namespace, dimension_name, resource_name):
        return any(
            a.get("Namespace") == namespace
            and any(d["Name"] == dimension_name and d["Value"] in ({"Ref": resource_name},
                                                                   {"Fn::GetAtt": [resource_name, "QueueName"]})
                    for d in a["Dimensions"])
            for a in alarms
        )

    for name, resource in resources.items():
        if resource["Type"] == "AWS::Serverless::Function" and not alarmed("AWS/Lambda", "FunctionName", name):
            problems.append(f"{name}: no Errors alarm")
        if resource["Type"] == "AWS::SQS::Queue" and not alarmed("AWS/SQS", "QueueName", name):
            problems.append(f"{name}: no alarm on its messages")
    emitted = emitted_metrics()
    for alarm in alarms:
        # A single-metric alarm, or a metric-math alarm over several (its MetricStats).
        metrics = [alarm] if "MetricName" in alarm else [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", [])
                                                          if "MetricStat" in m]
        for metric in metrics:
            if metric["Namespace"] != "pg-autouser":
                continue
            names = tuple(d["Name"] for d in metric["Dimensions"])
            function = next((d["Value"] for d in metric["Dimensions"] if d["Name"] == "Function"), None)
            if ("pg-autouser", metric["MetricName"], names, function) not in emitted:
                problems.append(f"alarm on {metric['MetricName']} {names} of {function}, which no function emits")


def dashboard_body(template, problems):
    """The dashboard's JSON, with each ${Resource.Attribute} of its Fn::Sub as <Resource.Attribute>."""
    dashboards = of_type(template, "AWS::CloudWatch::Dashboard")
    if len(dashboards) != 1:
        problems.append(f"expected one dashboard, found {sorted(dashboards)}")
        return None
    body = next(iter(dashboards.values()))["Properties"]["DashboardBody"]["Fn::Sub"]
    return json.loads(re.sub(r"\$\{([^}]+)\}", r"<\1>", body))


def check_dashboard(template, problems):
    body = dashboard_body(template, [] if problems is None else problems)
    if body is None:
        return
    emitted = emitted_metrics()
    queues = of_type(template, "AWS::SQS::Queue")
    dead_letter_queues = {name for name in queues if "DeadLetter" in name}
    shown, searched, shown_queues, shown_alarms, stats = set(), set(), set(), set(), set()
    for widget in body["widgets"]:
        properties = widget["properties"]
        if widget["type"] == "alarm":
            shown_alarms.update(a[1:-len(".Arn>")] for a in properties["alarms"])
            continue
        if widget["type"] != "metric":
            continue
        if not properties.get("metrics"):
            problems.append(f"dashboard widget {properties.get('title')!r} shows no metric")
        for entry in properties["metrics"]:
            options = entry[-1] if isinstance(entry[-1], dict) else {}
            if "expression" in options:
                search = re.fullmatch(r"""SEARCH\('\{([^,}]+),([^}]*)\} MetricName="(\w+)"', '\w+', \d+\)""",
                                      options["expression"])
                if not search:
                    problems.append(f"dashboard expression {options['expression']!r} is not a SEARCH of one metric")
                    continue
                namespace, dimension_names, metric = search.group(1), tuple(search.group(2).split(",")), search.group(3)
                if not any(e[:3] == (namespace, metric, dimension_names) for e in emitted):
                    problems.append(f"dashboard searches {namespace} {metric} {dimension_names}, which no function emits")
                searched.add(metric)
                continue
            fields = [f for f in entry if not isinstance(f, dict)]
            namespace, metric, dimension_pairs = fields[0], fields[1], fields[2:]
            names = tuple(dimension_pairs[0::2])
            values = dict(zip(dimension_pairs[0::2], dimension_pairs[1::2]))
            stats.add((metric, options.get("stat", properties.get("stat"))))
            if namespace == "AWS/SQS":
                queue = re.fullmatch(r"<(\w+)\.QueueName>", values.get("QueueName", ""))
                if metric != "ApproximateNumberOfMessagesVisible" or names != ("QueueName",) or not queue \
                        or queue.group(1) not in queues:
                    problems.append(f"dashboard metric {entry} is not a queue's depth")
                else:
                    shown_queues.add(queue.group(1))
                continue
            key = (namespace, metric, names, values.get("Function"))
            if key not in emitted:
                problems.append(f"dashboard metric {entry} is not one the functions emit (metrics.rs)")
            shown.add(metric)
    alarms = set(of_type(template, "AWS::CloudWatch::Alarm"))
    for alarm in sorted(alarms - shown_alarms):
        problems.append(f"dashboard: alarm {alarm} is not on it")
    for alarm in sorted(shown_alarms - alarms):
        problems.append(f"dashboard: shows {alarm}, which is not an alarm of the template")
    for queue in sorted(dead_letter_queues - shown_queues):
        problems.append(f"dashboard: dead-letter queue {queue}'s depth is not on it")
    for metric, function in {(e[1], e[3]) for e in emitted if e[3] in ("reaper", "discovery") and len(e[2]) == 1}:
        if metric not in shown:
            problems.append(f"dashboard: {function}'s {metric} is not on it")
    for metric in ("Activations", "Deactivations", "Drops"):
        if metric not in shown:
            problems.append(f"dashboard: {metric} is not on it")
    for metric in ("Refusals", "TransientFailures"):
        if metric not in searched:
            problems.append(f"dashboard: {metric} by kind is not on it")
    for stat in ("p50", "p99"):
        if ("ProvisioningLatency", stat) not in stats:
            problems.append(f"dashboard: ProvisioningLatency {stat} is not on it")


def statements(template):
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        documents = [properties["PolicyDocument"]] if "PolicyDocument" in properties else []
        if resource["Type"] == "AWS::IAM::Role":
            documents = [policy["PolicyDocument"] for policy in properties.get("Policies", [])]
        if resource["Type"] == "AWS::SQS::QueuePolicy":
            continue
        for statement in (s for document in documents for s in document["Statement"]):
            # Statements under a condition: {"Fn::If": [cond, statement, NoValue]}.
            if "Fn::If" in statement:
                statement = statement["Fn::If"][1]
            yield name, statement


def check_iam(template, problems):
    found = 0
    for name, statement in statements(template):
        found += 1
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            if "*" in action:
                problems.append(f"{name} {statement.get('Sid')}: wildcard action {action}")
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if "*" in resources:
            problems.append(f"{name} {statement.get('Sid')}: bare '*' resource")
    if found == 0:
        problems.append("no IAM statement found")


def getatt_name(value, attribute="Arn"):
    """The resource a {"Fn::GetAtt": [name, attribute]} names, or None."""
    if isinstance(value, dict) and "Fn::GetAtt" in value and value["Fn::GetAtt"][1] == attribute:
        return value["Fn::GetAtt"][0]
    return None


def of_type(template, kind):
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def role_statements(template, role_name):
    """Every statement a role holds: its inline policies and the template's managed policies it attaches."""
    role = template["Resources"][role_name]["Properties"]
    found = []
    for policy in role.get("Policies", []):
        found.extend(policy["PolicyDocument"]["Statement"])
    for arn in role.get("ManagedPolicyArns", []):
        if isinstance(arn, dict) and "Ref" in arn and arn["Ref"] in template["Resources"]:
            found.extend(template["Resources"][arn["Ref"]]["Properties"]["PolicyDocument"]["Statement"])
    return [s["Fn::If"][1] if "Fn::If" in s else s for s in found]


def as_list(value):
    return value if isinstance(value, list) else [value]


def check_delivery(template, all_problems):
    problems = []
    resources = template["Resources"]
    mappings = of_type(template, "AWS::Lambda::EventSourceMapping")
    invoke_configs = {c["Properties"]["FunctionName"]["Ref"]: c["Properties"]
                      for c in of_type(template, "AWS::Lambda::EventInvokeConfig").values()}
    queue_policies = [p["Properties"] for p in of_type(template, "AWS::SQS::QueuePolicy").values()]
    for rule_name, (function_name, window) in SESSION_RULES.items():
        rule = resources[rule_name]["Properties"]
        function = resources[function_name]["Properties"]
        [target] = rule["Targets"]
        queue_name = getatt_name(target["Arn"])
        if queue_name is None or resources[queue_name]["Type"] != "AWS::SQS::Queue":
            problems.append(f"{rule_name}: delivers to {target['Arn']}, not to an SQS queue")
            continue
        queue = resources[queue_name]["Properties"]
        if queue_name.endswith(".fifo") or queue.get("FifoQueue"):
            problems.append(f"{queue_name}: FIFO (one message group per rule would serialise every user)")
        visibility = queue.get("VisibilityTimeout", 30)
        if visibility < 6 * function["Timeout"]:
            problems.append(f"{queue_name}: visibility timeout {visibility} s < 6 x {function_name}'s timeout")
        redrive = queue.get("RedrivePolicy", {})
        dlq_name = getatt_name(redrive.get("deadLetterTargetArn"))
        if dlq_name is None:
            problems.append(f"{queue_name}: no redrive policy to a dead-letter queue")
            continue
        retried_for = redrive["maxReceiveCount"] * visibility
        if retried_for < window:
            problems.append(f"{queue_name}: retried for {retried_for} s (maxReceiveCount x visibility), expected {window} s")
        retention = queue.get("MessageRetentionPeriod", 345600)
        if retention <= retried_for:
            problems.append(f"{queue_name}: retention {retention} s ends before its retries ({retried_for} s)")
        if resources[dlq_name]["Properties"].get("MessageRetentionPeriod", 345600) <= retention:
            problems.append(f"{dlq_name}: keeps messages no longer than {queue_name} (standard queues keep the enqueue time)")
        if getatt_name(target.get("DeadLetterConfig", {}).get("Arn")) != dlq_name:
            problems.append(f"{rule_name}: events it cannot deliver to {queue_name} do not go to {dlq_name}")
        consumed = [m["Properties"] for m in mappings.values()
                    if getatt_name(m["Properties"]["EventSourceArn"]) == queue_name]
        if [m["FunctionName"] for m in consumed] != [{"Ref": function_name}]:
            problems.append(f"{queue_name}: not consumed by {function_name} alone")
        elif consumed[0].get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
            problems.append(f"{queue_name}: its event source mapping does not report batch item failures")
        config = invoke_configs.get(function_name)
        if config is None:
            problems.append(f"{function_name}: no EventInvokeConfig for direct asynchronous invokes")
        elif getatt_name(config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")) != queue_name:
            problems.append(f"{function_name}: failed asynchronous invokes do not go to {queue_name}")
        # Who may send: the rule (its Allow), nobody else but the function's role (its Deny).
        statements = [s for p in queue_policies for s in p["PolicyDocument"]["Statement"]
                      if getatt_name(s["Resource"]) == queue_name]
        allows = [s for s in statements if s["Effect"] == "Allow"]
        if [(s["Principal"], s["Condition"]) for s in allows] != [
                ({"Service": "events.amazonaws.com"}, {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_name, "Arn"]}}})]:
            problems.append(f"{queue_name}: its policy allows more than {rule_name}: {allows}")
        denies = [s for s in statements if s["Effect"] == "Deny" and "sqs:SendMessage" in as_list(s["Action"])]
        if not any(s["Condition"].get("ArnNotEquals", {}).get("aws:SourceArn") == {"Fn::GetAtt": [rule_name, "Arn"]}
                   for s in denies):
            problems.append(f"{queue_name}: no Deny of sqs:SendMessage to everyone but {rule_name}")
        role_name = getatt_name(function.get("Role"))
        granted = {(action, getatt_name(resource)) for s in role_statements(template, role_name)
                   for action in as_list(s["Action"]) for resource in as_list(s["Resource"])}
        for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:SendMessage"):
            if (action, queue_name) not in granted:
                problems.append(f"{role_name}: lacks {action} on {queue_name}")
    for name in ("DiscoveryFunction", "ReaperFunction"):
        config = invoke_configs.get(name)
        destination = config and getatt_name(config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination"))
        if destination is None or not destination.endswith("DeadLetterQueue"):
            problems.append(f"{name}: failed asynchronous invokes go to no dead-letter queue")
    all_problems.extend(problems)
    if not problems:
        print("ok: session rules -> queues -> functions, with redrive, partial batch responses and async fallbacks")


def check_delivery_in_moto(template, problems):
    """The session queues as the template makes them, in moto: the rule's events reach the
    queue, and a message received maxReceiveCount times (the function failed each time) moves
    to the dead-letter queue on the next receive."""
    resources = template["Resources"]
    parameters = template.get("Parameters", {})
    with moto() as client:
        events, sqs = client("events"), client("sqs")
        events.create_event_bus(Name="delivery")
        for rule_name in SESSION_RULES:
            rule = resources[rule_name]["Properties"]
            queue_name = getatt_name(rule["Targets"][0]["Arn"])
            if queue_name is None or "RedrivePolicy" not in resources[queue_name].get("Properties", {}):
                continue  # check_delivery names the problem
            queue = resources[queue_name]["Properties"]
            dlq_name = getatt_name(queue["RedrivePolicy"]["deadLetterTargetArn"])
            dlq_url = sqs.create_queue(QueueName=dlq_name)["QueueUrl"]
            dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            max_receives = queue["RedrivePolicy"]["maxReceiveCount"]
            url = sqs.create_queue(QueueName=queue_name, Attributes={
                "VisibilityTimeout": str(queue["VisibilityTimeout"]),
                "MessageRetentionPeriod": str(queue["MessageRetentionPeriod"]),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}),
            })["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=rule_name, EventBusName="delivery",
                            EventPattern=json.dumps(resolve(rule["EventPattern"], parameters)))
            events.put_targets(Rule=rule_name, EventBusName="delivery", Targets=[{"Id": "queue", "Arn": arn}])
            detail_type = rule["EventPattern"]["detail-type"][0]
            event = session_event("autouser", detail_type)
            events.put_events(Entries=[{"EventBusName": "delivery", "Source": "autouser", "DetailType": detail_type,
                                        "Detail": json.dumps(event["detail"])}])
            receives = 0
            while True:
                # VisibilityTimeout=0 stands for the visibility timeout running out after a failure.
                messages = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0,
                                               AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
                if not messages:
                    break
                receives += 1
                body = json.loads(messages[0]["Body"])
                if body.get("detail") != event["detail"] or body.get("detail-type") != detail_type:
                    problems.append(f"{queue_name}: the message is not the EventBridge event: {body}")
                    break
                if receives > max_receives:
                    break
            if receives != max_receives:
                problems.append(f"{queue_name}: delivered {receives} times, expected maxReceiveCount = {max_receives}")
            dead = sqs.receive_message(QueueUrl=dlq_url).get("Messages", [])
            if len(dead) != 1 or json.loads(dead[0]["Body"]).get("detail") != event["detail"]:
                problems.append(f"{queue_name}: after {max_receives} receives the event is not in {dlq_name}")
            else:
                print(f"ok: {rule_name} -> {queue_name}, received {receives} times, then in {dlq_name}")


def check_bus_policy(template, problems):
    policies = [p["Properties"] for p in of_type(template, "AWS::Events::EventBusPolicy").values()]
    bus = {"Fn::If": ["CreateBus", {"Ref": "EventBus"}, {"Ref": "EventBusName"}]}
    denies = []
    for policy in policies:
        statement = policy["Statement"]
        if policy.get("EventBusName") != bus:
            problems.append(f"bus policy {policy.get('StatementId')} is not on the session events' bus")
        if statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "events:PutEvents":
            denies.append(statement)
    ok = False
    for statement in denies:
        condition = statement["Condition"]
        if "Fn::If" not in condition:
            continue
        name, with_proxies, without = condition["Fn::If"]
        types = with_proxies.get("ForAnyValue:StringEquals", {}).get("events:detail-type", [])
        exempt = with_proxies.get("ArnNotEquals", {}).get("aws:PrincipalArn")
        ok = (set(types) == SESSION_DETAIL_TYPES and exempt == {"Ref": "ProxyPrincipalArns"}
              and set(without.get("ForAnyValue:StringEquals", {}).get("events:detail-type", [])) == SESSION_DETAIL_TYPES
              and "ArnNotEquals" not in without and name == "HasProxyPrincipals")
    if not ok:
        problems.append("no bus policy denies the session detail-types to every principal but ProxyPrincipalArns")
    else:
        print("ok: only ProxyPrincipalArns may put session events on the bus")


# The SDK call each granted action stands for, as it is spelled in the Rust code.
SDK_CALLS = {
    "rds:DescribeDBInstances": ".describe_db_instances()",
    "rds:DescribeDBClusters": ".describe_db_clusters()",
    "rds:DescribeGlobalClusters": ".describe_global_clusters()",
    "rds:ListTagsForResource": ".list_tags_for_resource()",
    "events:PutEvents": ".put_events()",
    "secretsmanager:GetSecretValue": ".get_secret_value()",
}


def check_config_source(template, problems):
    """The config's SSM parameter or S3 object reaches every function as its environment, and
    each function may read that one parameter or object (and the key), nothing wider."""
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in ("AUTOUSER_CONFIG", "AUTOUSER_CONFIG_SSM_PARAMETER", "AUTOUSER_CONFIG_S3_URI", "AUTOUSER_CONFIG_TTL"):
        if name not in variables:
            problems.append(f"Globals: the functions do not get {name}")
    policy = template["Resources"]["FunctionsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    conditional = {}
    for statement in policy:
        if isinstance(statement, dict) and "Fn::If" in statement:
            condition, chosen, _ = statement["Fn::If"]
            conditional[chosen["Sid"]] = (condition, chosen)
    expected = {
        "ReadTheConfigParameter": ("HasConfigParameter", ["ssm:GetParameter"], "${ConfigSsmParameterName}"),
        "ReadTheConfigObject": ("HasConfigObject", ["s3:GetObject"], "${ConfigS3Bucket}/${ConfigS3Key}"),
        "DecryptTheConfig": ("HasConfigKmsKey", ["kms:Decrypt"], None),
        "ReadTheJwksParameter": ("HasJwksParameter", ["ssm:GetParameter"], "${IdentityJwksSsmParameterName}"),
        "ReadTheJwksObject": ("HasJwksObject", ["s3:GetObject"], "${IdentityJwksS3Bucket}/${IdentityJwksS3Key}"),
    }
    for sid, (condition, actions, resource) in expected.items():
        if sid not in conditional:
            problems.append(f"FunctionsPolicy: no statement {sid}")
            continue
        found_condition, statement = conditional[sid]
        found_actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if found_condition != condition or found_actions != actions:
            problems.append(f"FunctionsPolicy {sid}: {found_condition} {found_actions}, expected {condition} {actions}")
        text = json.dumps(statement["Resource"])
        if "*" in text or (resource and resource not in text):
            problems.append(f"FunctionsPolicy {sid}: resource {text} is not exactly the config's (or JWKS's)")
    if not problems:
        print("ok: the functions read the config's (and the JWKS's) one SSM parameter or S3 object, nothing wider")


def check_roles(template, all_problems):
    problems = []
    functions = of_type(template, "AWS::Serverless::Function")
    roles = {name: getatt_name(f["Properties"].get("Role")) for name, f in functions.items()}
    for name, role in roles.items():
        if role is None or template["Resources"][role]["Type"] != "AWS::IAM::Role":
            problems.append(f"{name}: no role of its own")
    if len(set(roles.values())) != len(roles):
        problems.append(f"functions share roles: {roles}")
    code = "".join(p.read_text() for p in RUST_SOURCES.glob("*/src/**/*.rs"))
    for name, role in roles.items():
        if role is None:
            continue
        for statement in role_statements(template, role):
            for action in as_list(statement["Action"]):
                call = SDK_CALLS.get(action)
                if action.split(":")[0] in ("rds", "events", "secretsmanager") and (call is None or call not in code):
                    problems.append(f"{role}: grants {action}, which no Rust code calls ({call})")
            if name in ("DiscoveryFunction", "ReaperFunction") and any(
                    a.startswith("sqs:") and a != "sqs:SendMessage" for a in as_list(statement["Action"])):
                problems.append(f"{role}: {name} reads no queue")
    all_problems.extend(problems)
    if not problems:
        print("ok: one role per function, each action an SDK call the code makes")


PREFLIGHT_SOURCE = ROOT / "functions" / "autouser-engine" / "src" / "preflight.rs"


def check_concurrency(template, problems):
    """The session functions' reserved concurrency bounds the admin connections of a burst."""
    found = []
    parameter = template["Parameters"].get("SessionFunctionConcurrency")
    if parameter is None:
        found.append("no parameter SessionFunctionConcurrency")
    else:
        if parameter.get("Type") != "Number" or parameter.get("MinValue") != 0:
            found.append(f"SessionFunctionConcurrency: {parameter}, expected a Number from 0")
        rust = re.search(r"pub const SESSION_FUNCTION_CONCURRENCY: i32 = (\d+);", PREFLIGHT_SOURCE.read_text())
        if rust is None or parameter.get("Default") != int(rust.group(1)):
            found.append(f"SessionFunctionConcurrency defaults to {parameter.get('Default')}, preflight.rs sizes "
                         f"the CONNECTION LIMIT for {rust and rust.group(1)}")
    condition = template.get("Conditions", {}).get("ReserveSessionConcurrency")
    if condition != {"Fn::Not": [{"Fn::Equals": [{"Ref": "SessionFunctionConcurrency"}, "0"]}]}:
        found.append(f"ReserveSessionConcurrency: {condition}, expected SessionFunctionConcurrency not 0")
    expected = {"Fn::If": ["ReserveSessionConcurrency", {"Ref": "SessionFunctionConcurrency"}, {"Ref": "AWS::NoValue"}]}
    for name, function in of_type(template, "AWS::Serverless::Function").items():
        reserved = function["Properties"].get("ReservedConcurrentExecutions")
        wanted = expected if name in ("SessionStartFunction", "SessionEndFunction") else None
        if reserved != wanted:
            found.append(f"{name}: ReservedConcurrentExecutions {reserved}, expected {wanted}")
    problems.extend(found)
    if not found:
        print("ok: session-start and session-end reserve SessionFunctionConcurrency each (0: unreserved)")


def main():
    template = cfn_yaml.load(str(TEMPLATE))
    problems = []
    check_patterns(template, problems)
    check_targets(template, problems)
    check_delivery(template, problems)
    check_delivery_in_moto(template, problems)
    check_bus_policy(template, problems)
    check_roles(template, problems)
    check_alarms(template, problems)
    check_config_source(template, problems)
    check_concurrency(template, problems)
    dashboard_problems = []
    check_dashboard(template, dashboard_problems)
    if not dashboard_problems:
        print("ok: the dashboard shows only metrics the functions emit, every alarm and dead-letter queue")
    problems.extend(dashboard_problems)
    check_iam(template, problems)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("template checks passed")


if __name__ == "__main__":
    main()
