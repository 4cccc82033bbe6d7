"""Runs EventBridge rule patterns against events in moto, as tests/test_template.py's
check_patterns does for template.yaml: each rule is created on its bus of the emulator with an
SQS queue as its target, each event is put on its bus, and the queues tell which rules matched
(moto's own event matching, which handles `$or`). infra/test/provisioner.test.ts runs it on
the CDK construct's synthesised rules.

Reads JSON on stdin: {"rules": [{"name", "bus", "pattern"}], "events": [{"bus", "event"}]},
where a bus is "default" or the name of a bus to create and `event` is a whole EventBridge
event (source, detail-type, detail, resources, time). Prints, for each event in order, the
names of the rules it matched: [["rule", ...], ...]. Needs boto3 and moto (.deps/venv).
"""

import json
import sys

try:
    import boto3
    from moto import mock_aws
except ImportError as missing:
    raise SystemExit(f"{missing}: run with .deps/venv/bin first on PATH, as scripts/test does")


def main():
    given = json.load(sys.stdin)
    with mock_aws():
        client = lambda service: boto3.client(  # noqa: E731
            service, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        events, sqs = client("events"), client("sqs")
        buses = {rule["bus"] for rule in given["rules"]} | {e["bus"] for e in given["events"]}
        for bus in sorted(buses - {"default"}):
            events.create_event_bus(Name=bus)
        queues = {}
        for rule in given["rules"]:
            name = rule["name"]
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=name, EventBusName=rule["bus"], EventPattern=json.dumps(rule["pattern"]))
            events.put_targets(Rule=name, EventBusName=rule["bus"], Targets=[{"Id": "queue", "Arn": arn}])
            queues[name] = url
        answers = []
        for given_event in given["events"]:
            event = given_event["event"]
            put = events.put_events(Entries=[{
                "EventBusName": given_event["bus"], "Source": event["source"], "DetailType": event["detail-type"],
                "Detail": json.dumps(event["detail"]), "Resources": event.get("resources", []),
            }])
            if put["FailedEntryCount"]:
                raise SystemExit(f"moto refused the event {event}: {put['Entries']}")
            matched = []
            for name, url in queues.items():
                messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
                for message in messages:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    delivered = json.loads(message["Body"])
                    if delivered.get("detail") != event["detail"]:
                        raise SystemExit(f"{name} received {delivered}, not the event put: {event}")
                if messages:
                    matched.append(name)
            answers.append(sorted(matched))
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
