"""Checks template.yaml beyond cfn-lint, against a local AWS emulator (moto):

- every EventBridge rule's pattern matches exactly the sample events it should. moto does not
  implement TestEventPattern, so each rule is created on a bus of the emulator with an SQS
  queue as its target, each sample is put on the bus, and the queues tell which rules matched
  (moto's own event matching, which handles `$or`);
- every rule target retries and has a dead-letter queue;
- every function has an Errors alarm, every dead-letter queue an alarm, and every alarm on a
  pg-autouser metric names a metric and dimension that the functions emit (metrics.rs);
- no IAM statement has a wildcard action or a bare "*" resource.

Run with the project's virtualenv: .deps/venv/bin/python tests/test_template.py
Exits non-zero, naming each problem, when a check fails.
"""

import json
import socket
import sys
from pathlib import Path

import boto3
from cfnlint.decode import cfn_yaml
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
METRICS_SOURCE = ROOT / "functions" / "autouser-lambda" / "src" / "metrics.rs"


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


def check_patterns(template, problems):
    parameters = template.get("Parameters", {})
    rules = {
        name: resolve(resource["Properties"]["EventPattern"], parameters)
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Events::Rule" and "EventPattern" in resource["Properties"]
    }
    if not rules:
        problems.append("no rule with an event pattern")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = lambda service: boto3.client(  # noqa: E731
            service, region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
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
    finally:
        server.stop()


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
            a["Namespace"] == namespace
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
    emitted = METRICS_SOURCE.read_text()
    for alarm in alarms:
        if alarm["Namespace"] != "pg-autouser":
            continue
        if f'"{alarm["MetricName"]}"' not in emitted:
            problems.append(f"alarm on {alarm['MetricName']}, which metrics.rs never emits")
        for dimension in alarm["Dimensions"]:
            if f'"{dimension["Name"]}"' not in emitted:
                problems.append(f"alarm on dimension {dimension['Name']}, which metrics.rs never sets")


def statements(template):
    for name, resource in template["Resources"].items():
        document = resource.get("Properties", {}).get("PolicyDocument")
        if not document or resource["Type"] == "AWS::SQS::QueuePolicy":
            continue
        for statement in document["Statement"]:
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


def main():
    template = cfn_yaml.load(str(TEMPLATE))
    problems = []
    check_patterns(template, problems)
    check_targets(template, problems)
    check_alarms(template, problems)
    check_iam(template, problems)
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("template checks passed")


if __name__ == "__main__":
    main()
