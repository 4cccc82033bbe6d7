// AutoUserProvisioner, synthesised: resources, least-privilege IAM, rule patterns, DLQs,
// cdk-nag's AwsSolutions checks, and a snapshot. Synthesis builds the Rust functions with
// cargo-lambda (on PATH), so run after `cargo lambda build --release --arm64`, which it reuses.
// UPDATE_SNAPSHOT=1 rewrites the snapshot.

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { App, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { AwsSolutionsChecks } from 'cdk-nag';
import { AutoUserProvisioner, RDS_CHANGE_PATTERN } from '../lib';

const SNAPSHOT = path.join(__dirname, '..', '..', 'test', 'provisioner.snapshot.json');
const SYNTH_OUT = path.join(__dirname, '..', '..', 'cdk.out', 'test-template.json');

/** Every acknowledged cdk-nag finding, with its reason. */
const ACKNOWLEDGED: { id: string; reason: string }[] = [
  {
    id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
    reason: 'AWSLambdaVPCAccessExecutionRole is the minimal AWS policy for Lambda in a VPC (its ENIs and logs).',
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds-db:*:123456789012:dbuser:*/teleport-admin]',
    reason: 'rds-db:connect is limited to the admin user; instance resource ids are not known at deploy time.',
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:123456789012:db:*]',
    reason: 'Discovery enumerates every RDS instance of the account to find the tagged ones.',
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:123456789012:cluster:*]',
    reason: 'Discovery enumerates every Aurora cluster of the account to find the tagged ones.',
  },
  { id: 'AwsSolutions-SQS3', reason: 'These queues are the dead-letter queues; they need none of their own.' },
  { id: 'AwsSolutions-VPC7', reason: 'The test VPC stands in for the operator\'s VPC; flow logs are theirs to set.' },
];

function synth(): { stack: Stack; template: Template } {
  const app = new App();
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  const stack = new Stack(app, 'Test', { env: { account: '123456789012', region: 'us-east-1' } });
  const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 1 });
  const securityGroup = new ec2.SecurityGroup(stack, 'Functions', { vpc, description: 'pg-autouser functions' });
  new AutoUserProvisioner(stack, 'AutoUser', {
    vpc,
    securityGroups: [securityGroup],
    config: 'databases: []',
    adminUserName: 'teleport-admin',
    adminSecretArns: ['arn:aws:secretsmanager:us-east-1:123456789012:secret:orders-admin-AbCdEf'],
  });
  for (const acknowledgement of ACKNOWLEDGED) {
    Validations.of(stack).acknowledge(acknowledgement);
  }
  // Synthesis runs the cdk-nag checks and throws on any finding not acknowledged above.
  app.synth();
  return { stack, template: Template.fromStack(stack) };
}

const { template } = synth();

test('four functions on provided.al2023, arm64, in the VPC', () => {
  template.resourcePropertiesCountIs('AWS::Lambda::Function', {
    Runtime: 'provided.al2023',
    Handler: 'bootstrap',
    Architectures: ['arm64'],
    VpcConfig: Match.objectLike({ SecurityGroupIds: Match.anyValue() }),
  }, 4);
  template.resourceCountIs('AWS::SQS::Queue', 4);
  template.resourceCountIs('AWS::Events::Rule', 5);
  template.resourceCountIs('AWS::Events::EventBus', 1);
  // An Errors alarm per function, one per dead-letter queue, and ReaperFailures.
  template.resourceCountIs('AWS::CloudWatch::Alarm', 9);
});

test('IAM statements: no wildcard action, rds-db:connect only as the admin', () => {
  const policies = template.findResources('AWS::IAM::Policy');
  const statements = Object.values(policies).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
  assert.ok(statements.length >= 4, 'the functions have their statements');
  for (const statement of statements) {
    const actions = [statement.Action].flat();
    for (const action of actions) {
      assert.ok(!action.includes('*'), `wildcard action ${action}`);
    }
    assert.notDeepEqual([statement.Resource].flat(), ['*'], `bare * resource in ${JSON.stringify(statement)}`);
  }
  const connect = statements.find((s: any) => s.Action === 'rds-db:connect');
  assert.match(JSON.stringify(connect.Resource), /dbuser:\*\/teleport-admin/);
  const secrets = statements.find((s: any) => s.Action === 'secretsmanager:GetSecretValue');
  assert.equal(secrets.Resource, 'arn:aws:secretsmanager:us-east-1:123456789012:secret:orders-admin-AbCdEf');
});

test('rule patterns route session events and RDS changes', () => {
  template.hasResourceProperties('AWS::Events::Rule', {
    EventPattern: { 'source': ['autouser'], 'detail-type': ['Database Session Started'] },
  });
  template.hasResourceProperties('AWS::Events::Rule', {
    EventPattern: { 'source': ['autouser'], 'detail-type': ['Database Session Ended'] },
  });
  template.hasResourceProperties('AWS::Events::Rule', { EventPattern: RDS_CHANGE_PATTERN });
  template.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(15 minutes)' });
});

test('the reaper runs on a schedule and its failures raise an alarm', () => {
  const functions = template.findResources('AWS::Lambda::Function', { Properties: { Description: 'pg-autouser reaper' } });
  const [reaper] = Object.keys(functions);
  assert.ok(reaper, 'a reaper function');
  template.hasResourceProperties('AWS::Events::Rule', {
    Description: 'pg-autouser reaper run',
    ScheduleExpression: 'rate(15 minutes)',
    Targets: [Match.objectLike({ Arn: { 'Fn::GetAtt': [reaper, 'Arn'] } })],
  });
  template.hasResourceProperties('AWS::CloudWatch::Alarm', {
    Namespace: 'pg-autouser',
    MetricName: 'ReaperFailures',
    Dimensions: [{ Name: 'Function', Value: 'reaper' }],
    Threshold: 0,
  });
});

test('every rule target retries and has a dead-letter queue', () => {
  const rules = template.findResources('AWS::Events::Rule');
  for (const [name, rule] of Object.entries(rules) as [string, any][]) {
    for (const target of rule.Properties.Targets) {
      assert.ok(target.RetryPolicy, `${name} target without retry policy`);
      assert.ok(target.DeadLetterConfig?.Arn, `${name} target without dead-letter queue`);
    }
  }
});

test('cdk-nag AwsSolutions: every acknowledged finding carries a written reason', () => {
  // synth() above threw if any finding was not acknowledged.
  for (const { id, reason } of ACKNOWLEDGED) {
    assert.ok(reason.length > 30, `${id} needs a real reason`);
  }
});

test('snapshot', () => {
  // Asset hashes change with every build of the functions: they are not part of the snapshot.
  const json = JSON.stringify(template.toJSON(), null, 2).replace(/[0-9a-f]{64}(\.zip)?/g, '<asset-hash>$1');
  fs.mkdirSync(path.dirname(SYNTH_OUT), { recursive: true });
  fs.writeFileSync(SYNTH_OUT, JSON.stringify(template.toJSON(), null, 2));
  if (process.env.UPDATE_SNAPSHOT === '1' || !fs.existsSync(SNAPSHOT)) {
    fs.writeFileSync(SNAPSHOT, json + '\n');
    if (process.env.CI === '1') {
      assert.fail(`no snapshot at ${SNAPSHOT}: run UPDATE_SNAPSHOT=1 npm test and commit it`);
    }
  }
  assert.equal(json + '\n', fs.readFileSync(SNAPSHOT, 'utf8'), 'the template changed: review, then UPDATE_SNAPSHOT=1 npm test');
});
