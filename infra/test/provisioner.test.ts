// AutoUserProvisioner, synthesised: resources, least-privilege IAM, the session queues and their
// retries, DLQs, the bus policy, a snapshot; the rule patterns run in moto against sample
// events (test/match_events.py, as tests/test_template.py does for template.yaml: python3 must
// be .deps/venv's, first on PATH as scripts/test puts it); cdk-nag's AwsSolutions checks, each
// acknowledged finding checked against what its reason says. Synthesis builds the Rust
// functions with cargo-lambda (on PATH), so run after `cargo lambda build --release --arm64`,
// which it reuses; AUTOUSER_CDK_SKIP_BUNDLING=1 skips
// the build (CDK's bundling-stacks context: each asset gets a hash of its construct path), for
// checking the template without the functions. UPDATE_SNAPSHOT=1 rewrites the snapshot.

import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { App, CfnResource, Duration, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { AwsSolutionsChecks } from 'cdk-nag';
import { AutoUserProvisioner } from '../lib';

const SNAPSHOT = path.join(__dirname, '..', '..', 'test', 'provisioner.snapshot.json');
const SYNTH_OUT = path.join(__dirname, '..', '..', 'cdk.out', 'test-template.json');
const REPOSITORY = path.join(__dirname, '..', '..', '..');
const MATCH_EVENTS = path.join(__dirname, '..', '..', 'test', 'match_events.py');

/** A resource cdk-nag names in a finding: its construct path and its logical id. */
type Flagged = { path: string; logicalId: string };

/**
 * Every acknowledged cdk-nag finding, with its reason, and `holds`: the reason checked against
 * the synthesised construct, given the resources cdk-nag flags for that finding.
 */
const ACKNOWLEDGED: { id: string; reason: string; holds: (flagged: Flagged[]) => void }[] = [
  {
    id: 'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]',
    reason: 'AWSLambdaVPCAccessExecutionRole is the minimal AWS policy for Lambda in a VPC (its ENIs and logs).',
    holds: (flagged) => {
      // Only the functions' roles hold it, each function is in the VPC, and it is the one AWS
      // managed policy they hold.
      const functions = Object.values(template.findResources('AWS::Lambda::Function')) as any[];
      const roles = functions.map((fn) => fn.Properties.Role['Fn::GetAtt'][0]);
      assert.deepEqual(ids(flagged), [...roles].sort(), 'the functions\' roles, and no other role');
      for (const fn of functions) {
        assert.ok(fn.Properties.VpcConfig?.SubnetIds, `${fn.Properties.Description} runs in the VPC`);
      }
      const resources = template.toJSON().Resources;
      for (const role of roles) {
        const awsManaged = resources[role].Properties.ManagedPolicyArns.filter((arn: any) => !arn.Ref).map(renderArn);
        assert.deepEqual(awsManaged, ['arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole'],
          `${role}'s AWS managed policies`);
      }
    },
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds-db:*:123456789012:dbuser:*/teleport-admin]',
    reason: 'rds-db:connect is limited to the admin user; instance resource ids are not known at deploy time.',
    holds: (flagged) => {
      assert.deepEqual(grantsOf(flagged, 'arn:<AWS::Partition>:rds-db:*:123456789012:dbuser:*/teleport-admin'),
        ['rds-db:connect'], 'the wildcard dbuser resource grants rds-db:connect and nothing else');
    },
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:123456789012:db:*]',
    reason: 'Discovery enumerates every RDS instance of the account to find the tagged ones.',
    holds: (flagged) => {
      assert.deepEqual(grantsOf(flagged, 'arn:<AWS::Partition>:rds:*:123456789012:db:*'),
        ['rds:DescribeDBClusters', 'rds:DescribeDBInstances'], 'every RDS instance: described, nothing else');
      assert.ok(discoveryHolds(flagged), 'discovery\'s role holds the grant');
    },
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds:*:123456789012:cluster:*]',
    reason: 'Discovery enumerates every Aurora cluster of the account to find the tagged ones.',
    holds: (flagged) => {
      assert.deepEqual(grantsOf(flagged, 'arn:<AWS::Partition>:rds:*:123456789012:cluster:*'),
        ['rds:DescribeDBClusters', 'rds:DescribeDBInstances'], 'every Aurora cluster: described, nothing else');
      assert.ok(discoveryHolds(flagged), 'discovery\'s role holds the grant');
    },
  },
  {
    id: 'AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:rds::123456789012:global-cluster:*]',
    reason: 'A global database secondary is provisioned through the global database\'s writer, found by describing the global clusters.',
    holds: (flagged) => {
      assert.deepEqual(grantsOf(flagged, 'arn:<AWS::Partition>:rds::123456789012:global-cluster:*'),
        ['rds:DescribeGlobalClusters'], 'every global database: described, nothing else');
    },
  },
  {
    id: 'AwsSolutions-SQS3',
    reason: 'These queues are the dead-letter queues; they need none of their own.',
    holds: (flagged) => {
      // A dead-letter queue: another queue's redrive target, or a rule target's DeadLetterConfig.
      const resources = template.toJSON().Resources;
      const deadLetterQueues = new Set<string>();
      for (const resource of Object.values(resources) as any[]) {
        const redrive = resource.Type === 'AWS::SQS::Queue' && resource.Properties.RedrivePolicy;
        if (redrive) deadLetterQueues.add(redrive.deadLetterTargetArn['Fn::GetAtt'][0]);
        for (const target of resource.Type === 'AWS::Events::Rule' ? resource.Properties.Targets : []) {
          if (target.DeadLetterConfig) deadLetterQueues.add(target.DeadLetterConfig.Arn['Fn::GetAtt'][0]);
        }
      }
      // (cdk-nag itself passes those that are another queue's redrive target.)
      for (const queue of ids(flagged)) {
        assert.ok(deadLetterQueues.has(queue), `${queue}, a queue without a dead-letter queue, is not a dead-letter queue`);
      }
    },
  },
  {
    id: 'AwsSolutions-VPC7',
    reason: 'The test VPC stands in for the operator\'s VPC; flow logs are theirs to set.',
    holds: (flagged) => {
      assert.deepEqual(flagged.map((f) => f.path), ['Test/Vpc/Resource'], 'the test\'s VPC, none of the construct\'s');
    },
  },
];

/** The sorted logical ids of flagged resources. */
function ids(flagged: Flagged[]): string[] {
  return flagged.map((f) => f.logicalId).sort();
}

/** An ARN of the template as cdk-nag writes it in a finding: `{Ref: AWS::Partition}` as <AWS::Partition>. */
function renderArn(arn: any): string {
  if (typeof arn === 'string') return arn;
  if (arn.Ref) return `<${arn.Ref}>`;
  if (arn['Fn::Join']) return arn['Fn::Join'][1].map(renderArn).join(arn['Fn::Join'][0]);
  return JSON.stringify(arn);
}

/** The sorted actions that the flagged policies' statements grant on `resource`. */
function grantsOf(flagged: Flagged[], resource: string): string[] {
  const resources = template.toJSON().Resources;
  const actions = flagged.flatMap(({ logicalId }) => resources[logicalId].Properties.PolicyDocument.Statement)
    .filter((statement: any) => [statement.Resource].flat().map(renderArn).includes(resource))
    .flatMap((statement: any) => [statement.Action].flat());
  assert.ok(actions.length > 0, `a flagged policy grants ${resource}`);
  return [...new Set(actions as string[])].sort();
}

/** Whether discovery's role holds one of the flagged managed policies. */
function discoveryHolds(flagged: Flagged[]): boolean {
  const [, discovery] = functionNamed('pg-autouser discovery');
  const role = template.toJSON().Resources[discovery.Properties.Role['Fn::GetAtt'][0]];
  return role.Properties.ManagedPolicyArns.some((arn: any) => ids(flagged).includes(arn.Ref));
}

const PROXY = 'arn:aws:iam::123456789012:role/teleport-db-agent';
const SESSION_DETAIL_TYPES = ['Database Session Started', 'Database Session Ended'];

function synth(): { stack: Stack; template: Template; findings: { id: string; flagged: Flagged[] }[] } {
  const skipBundling = process.env.AUTOUSER_CDK_SKIP_BUNDLING === '1';
  const app = new App(skipBundling ? { context: { 'aws:cdk:bundling-stacks': [] } } : {});
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
    proxyPrincipalArns: [PROXY],
  });
  // What cdk-nag finds before anything is acknowledged: each finding's id and the resources it names.
  const resources = stack.node.findAll().filter(CfnResource.isCfnResource);
  const findings = new AwsSolutionsChecks().validateScope(stack).violations.map((violation) => ({
    id: violation.ruleName,
    flagged: violation.violatingResources.map(({ constructPath }) => {
      const resource = resources.find((r) => r.node.path === constructPath);
      assert.ok(resource, `cdk-nag flags ${constructPath}, a CloudFormation resource`);
      return { path: constructPath!, logicalId: stack.resolve(resource.logicalId) as string };
    }),
  }));
  for (const { id, reason } of ACKNOWLEDGED) {
    Validations.of(stack).acknowledge({ id, reason });
  }
  // Synthesis runs the cdk-nag checks and throws on any finding not acknowledged above.
  app.synth();
  return { stack, template: Template.fromStack(stack), findings };
}

const { template, findings } = synth();

test('four functions on provided.al2023, arm64, in the VPC', () => {
  template.resourcePropertiesCountIs('AWS::Lambda::Function', {
    Runtime: 'provided.al2023',
    Handler: 'bootstrap',
    Architectures: ['arm64'],
    VpcConfig: Match.objectLike({ SecurityGroupIds: Match.anyValue() }),
  }, 4);
  // Two session queues, four dead-letter queues.
  template.resourceCountIs('AWS::SQS::Queue', 6);
  template.resourceCountIs('AWS::Events::Rule', 5);
  template.resourceCountIs('AWS::Events::EventBus', 1);
  // An Errors alarm per function, one per dead-letter queue, one per session queue's backlog,
  // ReaperFailures and ConfigLoadFailures.
  template.resourceCountIs('AWS::CloudWatch::Alarm', 12);
});

/** Every IAM statement of the template, with the resource that holds it. */
function iamStatements(): { holder: string; statement: any }[] {
  const found: { holder: string; statement: any }[] = [];
  for (const kind of ['AWS::IAM::Policy', 'AWS::IAM::ManagedPolicy']) {
    for (const [holder, policy] of Object.entries(template.findResources(kind)) as [string, any][]) {
      for (const statement of policy.Properties.PolicyDocument.Statement) {
        found.push({ holder, statement });
      }
    }
  }
  return found;
}

/** The logical ids of the policies a role holds: inline (AWS::IAM::Policy) and managed. */
function statementsOfRole(role: string): any[] {
  const resources = template.toJSON().Resources;
  const managed = (resources[role].Properties.ManagedPolicyArns ?? [])
    .filter((arn: any) => arn.Ref)
    .map((arn: any) => arn.Ref);
  return iamStatements()
    .filter(({ holder }) => managed.includes(holder)
      || (resources[holder].Type === 'AWS::IAM::Policy' && resources[holder].Properties.Roles.some((r: any) => r.Ref === role)))
    .map(({ statement }) => statement);
}

function functionNamed(description: string): [string, any] {
  const found = Object.entries(template.findResources('AWS::Lambda::Function', { Properties: { Description: description } }));
  assert.equal(found.length, 1, `one function ${description}`);
  return found[0] as [string, any];
}

test('IAM statements: no wildcard action, rds-db:connect only as the admin', () => {
  const statements = iamStatements().map(({ statement }) => statement);
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

test('each function has its own role, and no role grants an action the code never calls', () => {
  const functions = Object.values(template.findResources('AWS::Lambda::Function')) as any[];
  const roles = functions.map((f) => f.Properties.Role['Fn::GetAtt'][0]);
  assert.equal(new Set(roles).size, 4, `one role per function: ${roles}`);
  const actions = iamStatements().flatMap(({ statement }) => [statement.Action].flat());
  assert.ok(!actions.includes('rds:ListTagsForResource'), 'rds:ListTagsForResource is unused: tags come with DescribeDB*');
  for (const description of ['pg-autouser discovery', 'pg-autouser reaper']) {
    const [, fn] = functionNamed(description);
    const reads = statementsOfRole(fn.Properties.Role['Fn::GetAtt'][0])
      .flatMap((s) => [s.Action].flat())
      .filter((a: string) => a === 'sqs:ReceiveMessage');
    assert.deepEqual(reads, [], `${description} reads no queue`);
  }
});

// Each session rule -> its function, and how long its events are retried before the
// dead-letter queue (as in template.yaml: ends 24 h, starts 6 h).
const SESSION_ROUTES = [
  { detailType: 'Database Session Started', fn: 'pg-autouser session-start', window: 6 * 3600 },
  { detailType: 'Database Session Ended', fn: 'pg-autouser session-end', window: 24 * 3600 },
];

test('session events go through a queue with hours of retries, partial batch responses and a dead-letter queue', () => {
  const resources = template.toJSON().Resources;
  for (const { detailType, fn: description, window } of SESSION_ROUTES) {
    const [ruleId, rule] = Object.entries(template.findResources('AWS::Events::Rule', {
      Properties: { EventPattern: { 'detail-type': [detailType] } },
    }))[0] as [string, any];
    const [target] = rule.Properties.Targets;
    const queueId = target.Arn['Fn::GetAtt'][0];
    const queue = resources[queueId];
    assert.equal(queue.Type, 'AWS::SQS::Queue', `${detailType} goes to a queue`);
    const [fnId, fn] = functionNamed(description);
    const visibility = queue.Properties.VisibilityTimeout;
    assert.ok(visibility >= 6 * fn.Properties.Timeout, `${queueId}: visibility ${visibility} >= 6 x the timeout`);
    const redrive = queue.Properties.RedrivePolicy;
    assert.ok(redrive.maxReceiveCount * visibility >= window, `${queueId}: retried ${redrive.maxReceiveCount * visibility} s`);
    assert.ok(queue.Properties.MessageRetentionPeriod > redrive.maxReceiveCount * visibility, `${queueId} keeps messages past its retries`);
    const dlqId = redrive.deadLetterTargetArn['Fn::GetAtt'][0];
    assert.equal(target.DeadLetterConfig.Arn['Fn::GetAtt'][0], dlqId, 'undeliverable events go to the same dead-letter queue');
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'ApproximateNumberOfMessagesVisible',
      Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [dlqId, 'QueueName'] } }],
    });
    template.hasResourceProperties('AWS::Lambda::EventSourceMapping', {
      EventSourceArn: { 'Fn::GetAtt': [queueId, 'Arn'] },
      FunctionName: { Ref: fnId },
      FunctionResponseTypes: ['ReportBatchItemFailures'],
    });
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: fnId },
      MaximumRetryAttempts: 0,
      DestinationConfig: { OnFailure: { Destination: { 'Fn::GetAtt': [queueId, 'Arn'] } } },
    });
    // Nobody but the rule and the function's own role may send to the queue.
    const policy = Object.values(template.findResources('AWS::SQS::QueuePolicy'))
      .find((p: any) => p.Properties.Queues.some((q: any) => q.Ref === queueId)) as any;
    const deny = policy.Properties.PolicyDocument.Statement.find((s: any) => s.Effect === 'Deny' && s.Action === 'sqs:SendMessage');
    assert.deepEqual(deny.Condition.ArnNotEquals['aws:SourceArn'], { 'Fn::GetAtt': [ruleId, 'Arn'] });
    assert.deepEqual(deny.Condition.ArnNotEquals['aws:PrincipalArn'], [{ 'Fn::GetAtt': [fn.Properties.Role['Fn::GetAtt'][0], 'Arn'] }]);
  }
});

test('discovery and the reaper send runs that failed their retries to their dead-letter queue', () => {
  for (const description of ['pg-autouser discovery', 'pg-autouser reaper']) {
    const [fnId] = functionNamed(description);
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: fnId },
      MaximumRetryAttempts: 2,
      DestinationConfig: { OnFailure: { Destination: Match.objectLike({ 'Fn::GetAtt': Match.anyValue() }) } },
    });
  }
});

test('the bus lets only the proxies put session events', () => {
  template.hasResourceProperties('AWS::Events::EventBusPolicy', {
    Statement: Match.objectLike({
      Effect: 'Deny',
      Principal: { AWS: '*' },
      Action: 'events:PutEvents',
      Condition: {
        'ForAnyValue:StringEquals': { 'events:detail-type': SESSION_DETAIL_TYPES },
        'ArnNotEquals': { 'aws:PrincipalArn': [PROXY] },
      },
    }),
  });
  template.hasResourceProperties('AWS::Events::EventBusPolicy', {
    Statement: Match.objectLike({ Effect: 'Allow', Principal: { AWS: PROXY }, Action: 'events:PutEvents' }),
  });
});

/** The bus an event is put on: the account's default bus (AWS services' events) or the construct's. */
type Bus = 'default' | 'construct';

const EVENT_TIME = '2026-11-28T09:30:00Z';

/** A proxy's session event, as the README shows it. */
function sessionEvent(source: string, detailType: string) {
  return {
    'version': '0', 'id': '6a7e8feb-b491-4cf7-a9f1-bf3703467718', 'detail-type': detailType, source,
    'account': '123456789012', 'time': EVENT_TIME, 'region': 'us-east-1', 'resources': [],
    'detail': {
      session_id: '9f1c', user: 'alice', roles: ['auto-db-users'], database: 'orders', db_name: 'app',
      origin_cluster: 'teleport.example.com',
    },
  };
}

/** An RDS event, as RDS puts it on the default bus (RDS-EVENT-xxxx, with its category and message). */
function rdsEvent(detailType: 'RDS DB Instance Event' | 'RDS DB Cluster Event', eventId: string, category: string, message: string) {
  const instance = detailType === 'RDS DB Instance Event';
  const arn = instance ? 'arn:aws:rds:us-east-1:123456789012:db:orders' : 'arn:aws:rds:us-east-1:123456789012:cluster:ledger';
  return {
    'version': '0', 'id': '68f6e973-1a0c-d37b-f2f2-94a7f62ffd4e', 'detail-type': detailType, 'source': 'aws.rds',
    'account': '123456789012', 'time': EVENT_TIME, 'region': 'us-east-1', 'resources': [arn],
    'detail': {
      EventCategories: [category], SourceType: instance ? 'DB_INSTANCE' : 'CLUSTER', SourceArn: arn,
      Date: '2026-11-28T09:30:00.292Z', Message: message, SourceIdentifier: instance ? 'orders' : 'ledger',
      EventID: eventId,
    },
  };
}

/** A management API call, as CloudTrail puts it on the default bus. */
function cloudTrailEvent(service: string, eventName: string, requestParameters: Record<string, unknown>) {
  return {
    'version': '0', 'id': '3c1b0b2e-5d6a-4f0e-8a7b-2f9e4c1d0a11', 'detail-type': 'AWS API Call via CloudTrail',
    'source': `aws.${service}`, 'account': '123456789012', 'time': EVENT_TIME, 'region': 'us-east-1', 'resources': [],
    'detail': {
      eventVersion: '1.09',
      userIdentity: { type: 'AssumedRole', arn: 'arn:aws:sts::123456789012:assumed-role/dba/jane', accountId: '123456789012' },
      eventTime: EVENT_TIME, eventSource: `${service}.amazonaws.com`, eventName, awsRegion: 'us-east-1',
      sourceIPAddress: '203.0.113.7', userAgent: 'aws-cli/2.17.0', requestParameters, responseElements: null,
      requestID: 'b1c2d3e4-0000-4a5b-9c8d-123456789abc', eventID: 'e1f2a3b4-1111-4c5d-8e9f-abcdef012345',
      readOnly: false, eventType: 'AwsApiCall', managementEvent: true, recipientAccountId: '123456789012',
      eventCategory: 'Management',
    },
  };
}

const TAGS_ON_ORDERS = {
  resourceName: 'arn:aws:rds:us-east-1:123456789012:db:orders',
  tags: [{ key: 'teleport.dev/db-admin', value: 'teleport-admin' }],
};

/** Events, the bus they are put on, and the functions they must reach (no other). */
const SAMPLES: { description: string; bus: Bus; event: any; reaches: string[] }[] = [
  { description: 'a proxy\'s session start', bus: 'construct', event: sessionEvent('autouser', 'Database Session Started'), reaches: ['session-start'] },
  { description: 'a proxy\'s session end', bus: 'construct', event: sessionEvent('autouser', 'Database Session Ended'), reaches: ['session-end'] },
  { description: 'a session start on the default bus', bus: 'default', event: sessionEvent('autouser', 'Database Session Started'), reaches: [] },
  { description: 'a session start from another source', bus: 'construct', event: sessionEvent('someone-else', 'Database Session Started'), reaches: [] },
  { description: 'a session end in lower case', bus: 'construct', event: sessionEvent('autouser', 'database session ended'), reaches: [] },
  { description: 'an audit event (no loop)', bus: 'construct', event: sessionEvent('autouser.audit', 'Database User Activated'), reaches: [] },
  { description: 'a discovery report (no loop)', bus: 'construct', event: sessionEvent('autouser.audit', 'Database Ready'), reaches: [] },
  {
    description: 'an RDS instance created', bus: 'default', reaches: ['discovery'],
    event: rdsEvent('RDS DB Instance Event', 'RDS-EVENT-0005', 'creation', 'DB instance created'),
  },
  {
    description: 'an Aurora cluster created', bus: 'default', reaches: ['discovery'],
    event: rdsEvent('RDS DB Cluster Event', 'RDS-EVENT-0170', 'creation', 'DB cluster created'),
  },
  {
    description: 'RDS tags added (CloudTrail)', bus: 'default', reaches: ['discovery'],
    event: cloudTrailEvent('rds', 'AddTagsToResource', TAGS_ON_ORDERS),
  },
  {
    description: 'RDS tags removed (CloudTrail)', bus: 'default', reaches: ['discovery'],
    event: cloudTrailEvent('rds', 'RemoveTagsFromResource', { resourceName: TAGS_ON_ORDERS.resourceName, tagKeys: ['teleport.dev/db-admin'] }),
  },
  {
    description: 'an RDS instance rebooted', bus: 'default', reaches: [],
    event: rdsEvent('RDS DB Instance Event', 'RDS-EVENT-0006', 'availability', 'DB instance restarted'),
  },
  {
    description: 'an RDS instance deleted', bus: 'default', reaches: [],
    event: rdsEvent('RDS DB Instance Event', 'RDS-EVENT-0003', 'deletion', 'DB instance deleted'),
  },
  {
    description: 'an Aurora cluster deleted', bus: 'default', reaches: [],
    event: rdsEvent('RDS DB Cluster Event', 'RDS-EVENT-0171', 'deletion', 'DB cluster deleted'),
  },
  {
    description: 'an RDS snapshot taken (CloudTrail)', bus: 'default', reaches: [],
    event: cloudTrailEvent('rds', 'CreateDBSnapshot', { dBInstanceIdentifier: 'orders', dBSnapshotIdentifier: 'orders-1' }),
  },
  {
    description: 'EC2 tags added (CloudTrail)', bus: 'default', reaches: [],
    event: cloudTrailEvent('ec2', 'CreateTags', { resourcesSet: { items: [{ resourceId: 'i-0abc' }] }, tagSet: { items: [] } }),
  },
  {
    description: 'ElastiCache tags added (CloudTrail)', bus: 'default', reaches: [],
    event: cloudTrailEvent('elasticache', 'AddTagsToResource', { resourceName: 'arn:aws:elasticache:us-east-1:123456789012:cluster:cache', tags: [] }),
  },
];

/** Each rule with an event pattern: its bus and the function it feeds (directly, or through the queue it sends to). */
function patternRules(): { name: string; bus: Bus; pattern: unknown; fn: string }[] {
  const resources = template.toJSON().Resources;
  const binary = (fnId: string) => resources[fnId].Properties.Description.replace(/^pg-autouser /, '');
  return (Object.entries(template.findResources('AWS::Events::Rule')) as [string, any][])
    .filter(([, rule]) => rule.Properties.EventPattern)
    .map(([name, rule]) => {
      const busRef = rule.Properties.EventBusName;
      assert.ok(busRef === undefined || resources[busRef.Ref]?.Type === 'AWS::Events::EventBus', `${name}'s bus: ${JSON.stringify(busRef)}`);
      assert.doesNotMatch(JSON.stringify(rule.Properties.EventPattern), /"(Ref|Fn::\w+)"/, `${name}'s pattern is literal`);
      const [target] = rule.Properties.Targets;
      const targetId = target.Arn['Fn::GetAtt'][0];
      let fn: string;
      if (resources[targetId].Type === 'AWS::Lambda::Function') {
        fn = binary(targetId);
      } else {
        assert.equal(resources[targetId].Type, 'AWS::SQS::Queue', `${name} targets a function or a queue`);
        const consumers = (Object.values(template.findResources('AWS::Lambda::EventSourceMapping')) as any[])
          .filter((m) => m.Properties.EventSourceArn['Fn::GetAtt']?.[0] === targetId);
        assert.equal(consumers.length, 1, `one function consumes ${targetId}`);
        fn = binary(consumers[0].Properties.FunctionName.Ref);
      }
      return { name, bus: busRef === undefined ? 'default' : 'construct', pattern: rule.Properties.EventPattern, fn };
    });
}

test('rule patterns, run in moto against sample events: session events reach their function, RDS changes discovery, nothing else anything', () => {
  const rules = patternRules();
  const input = JSON.stringify({
    rules: rules.map(({ name, bus, pattern }) => ({ name, bus, pattern })),
    events: SAMPLES.map(({ bus, event }) => ({ bus, event })),
  });
  // The interpreter of .deps/venv (boto3, moto), first on PATH as scripts/test runs this.
  const matched = JSON.parse(execFileSync('python3', [MATCH_EVENTS], { input, encoding: 'utf8' })) as string[][];
  const problems: string[] = [];
  SAMPLES.forEach(({ description, reaches }, i) => {
    const reached = [...new Set(matched[i].map((name) => rules.find((r) => r.name === name)!.fn))].sort();
    if (JSON.stringify(reached) !== JSON.stringify([...reaches].sort())) {
      problems.push(`${description}: reaches [${reached}] (rules ${matched[i]}), expected [${reaches}]`);
    }
  });
  for (const { name } of rules) {
    if (!matched.some((names) => names.includes(name))) problems.push(`${name}: no sample matches it`);
  }
  assert.deepEqual(problems, []);
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

/**
 * The metrics the functions emit, as tests/emitted_metrics.py reads them from metrics.rs:
 * `namespace metric dimension,names function` strings.
 */
function emittedMetrics(): Set<string> {
  const script = path.join(REPOSITORY, 'tests', 'emitted_metrics.py');
  const emitted = JSON.parse(execFileSync('python3', [script], { encoding: 'utf8' })) as [string, string, string[], string][];
  return new Set(emitted.map(([namespace, metric, dimensions, fn]) => `${namespace} ${metric} ${dimensions.join(',')} ${fn}`));
}

/** The dashboard's body, each token of its Fn::Join written as <Logical.Attribute> or <Ref>. */
function dashboardBody(): any {
  const dashboards = Object.values(template.findResources('AWS::CloudWatch::Dashboard')) as any[];
  assert.equal(dashboards.length, 1, 'one dashboard');
  const body = dashboards[0].Properties.DashboardBody;
  const parts: any[] = body['Fn::Join'] ? body['Fn::Join'][1] : [body];
  return JSON.parse(parts.map((part) => {
    if (typeof part === 'string') return part;
    if (part['Fn::GetAtt']) return `<${part['Fn::GetAtt'].join('.')}>`;
    return `<${part.Ref}>`;
  }).join(''));
}

test('the dashboard shows only metrics the functions emit, and every alarm and dead-letter queue', () => {
  const emitted = emittedMetrics();
  assert.ok(emitted.size >= 20, `read the emitted metrics: ${[...emitted]}`);
  const shown = new Set<string>();
  const searched = new Set<string>();
  const queues = new Set<string>();
  const stats = new Set<string>();
  let alarms: string[] = [];
  for (const widget of dashboardBody().widgets) {
    if (widget.type === 'alarm') {
      alarms = alarms.concat(widget.properties.alarms.map((arn: string) => arn.replace(/^<(.*)\.Arn>$/, '$1')));
      continue;
    }
    assert.ok(widget.properties.metrics?.length > 0, `widget ${widget.properties.title} shows a metric`);
    for (const entry of widget.properties.metrics) {
      const last = entry[entry.length - 1];
      const options = typeof last === 'object' ? last : {};
      if (options.expression) {
        const search = /^SEARCH\('\{([^,}]+),([^}]*)\} MetricName="(\w+)"', '\w+', \d+\)$/.exec(options.expression);
        assert.ok(search, `${options.expression} is a SEARCH of one metric`);
        const [, namespace, dimensions, metric] = search;
        assert.ok([...emitted].some((e) => e.startsWith(`${namespace} ${metric} ${dimensions} `)),
          `the dashboard searches ${namespace} ${metric} ${dimensions}, which no function emits`);
        searched.add(metric);
        continue;
      }
      const [namespace, metric, ...dimensions] = entry.filter((field: unknown) => typeof field === 'string');
      stats.add(`${metric} ${options.stat}`);
      if (namespace === 'AWS/SQS') {
        assert.deepEqual([metric, dimensions[0]], ['ApproximateNumberOfMessagesVisible', 'QueueName'], `${entry}`);
        queues.add(dimensions[1].replace(/^<(.*)\.QueueName>$/, '$1'));
        continue;
      }
      const names = dimensions.filter((_: string, i: number) => i % 2 === 0).join(',');
      const fn = dimensions[dimensions.indexOf('Function') + 1];
      assert.ok(emitted.has(`${namespace} ${metric} ${names} ${fn}`), `${JSON.stringify(entry)} is not a metric the functions emit`);
      shown.add(metric);
    }
  }
  assert.deepEqual(alarms.sort(), Object.keys(template.findResources('AWS::CloudWatch::Alarm')).sort(), 'every alarm, once');
  const deadLetterQueues = Object.keys(template.findResources('AWS::SQS::Queue')).filter((q) => /DeadLetterQueue/.test(q));
  assert.deepEqual([...queues].sort(), deadLetterQueues.sort(), 'every dead-letter queue\'s depth');
  for (const e of emitted) {
    const [, metric, dimensions, fn] = e.split(' ');
    if ((fn === 'reaper' || fn === 'discovery') && dimensions === 'Function') {
      assert.ok(shown.has(metric), `${fn}'s ${metric} is on the dashboard`);
    }
  }
  for (const metric of ['Activations', 'Deactivations', 'Drops']) assert.ok(shown.has(metric), metric);
  for (const metric of ['Refusals', 'TransientFailures']) assert.ok(searched.has(metric), `${metric} by kind`);
  for (const stat of ['p50', 'p99']) assert.ok(stats.has(`ProvisioningLatency ${stat}`), `latency ${stat}`);
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

test('cdk-nag AwsSolutions: each acknowledged finding is one the construct has, on the resources its reason names', () => {
  // synth() above threw on any finding not acknowledged; here, no acknowledgement is stale,
  // and each finding is what its reason says it is.
  assert.deepEqual(findings.map((f) => f.id).sort(), ACKNOWLEDGED.map((a) => a.id).sort(),
    'the findings of the construct (and its test VPC) are the acknowledged ones');
  for (const { id, holds } of ACKNOWLEDGED) {
    holds(findings.find((f) => f.id === id)!.flagged);
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

/** A stack with the construct given `config` props, bundling skipped (only IAM and the environment are read). */
function synthWith(configProps: Record<string, unknown>): Template {
  const app = new App({ context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new Stack(app, 'Stored', { env: { account: '123456789012', region: 'us-east-1' } });
  const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 1 });
  new AutoUserProvisioner(stack, 'AutoUser', { vpc, securityGroups: [], ...configProps });
  return Template.fromStack(stack);
}

function policyStatements(stored: Template): any[] {
  return Object.values(stored.findResources('AWS::IAM::ManagedPolicy'))
    .flatMap((policy: any) => policy.Properties.PolicyDocument.Statement);
}

test('a config in an SSM SecureString: every function gets its name and may read that parameter and key only', () => {
  const stack = new Stack(new App(), 'Refs', { env: { account: '123456789012', region: 'us-east-1' } });
  const stored = synthWith({
    configParameter: ssm.StringParameter.fromSecureStringParameterAttributes(stack, 'P', { parameterName: '/pg-autouser/config' }),
    configKey: kms.Key.fromKeyArn(stack, 'K', 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab'),
    configTtl: Duration.minutes(5),
  });
  for (const fn of Object.values(stored.findResources('AWS::Lambda::Function')) as any[]) {
    const variables = fn.Properties.Environment.Variables;
    assert.equal(variables.AUTOUSER_CONFIG_SSM_PARAMETER, '/pg-autouser/config');
    assert.equal(variables.AUTOUSER_CONFIG, '');
    assert.equal(variables.AUTOUSER_CONFIG_TTL, '300s');
  }
  const statements = policyStatements(stored);
  const read = statements.find((s) => s.Sid === 'ReadTheConfigParameter');
  assert.equal(read.Action, 'ssm:GetParameter');
  assert.match(JSON.stringify(read.Resource), /:parameter\/pg-autouser\/config"/);
  const decrypt = statements.find((s) => s.Sid === 'DecryptTheConfig');
  assert.equal(decrypt.Action, 'kms:Decrypt');
  assert.equal(decrypt.Resource, 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab');
  assert.ok(!statements.some((s) => s.Sid === 'ReadTheConfigObject'));
});

test('a config in an S3 object: its URI, and read on that object only', () => {
  const stack = new Stack(new App(), 'Refs', { env: { account: '123456789012', region: 'us-east-1' } });
  const stored = synthWith({
    configObject: { bucket: s3.Bucket.fromBucketName(stack, 'B', 'configs'), key: 'pg-autouser/config.yaml' },
  });
  for (const fn of Object.values(stored.findResources('AWS::Lambda::Function')) as any[]) {
    assert.equal(fn.Properties.Environment.Variables.AUTOUSER_CONFIG_S3_URI, 's3://configs/pg-autouser/config.yaml');
    assert.equal(fn.Properties.Environment.Variables.AUTOUSER_CONFIG_TTL, '60s');
  }
  const read = policyStatements(stored).find((s) => s.Sid === 'ReadTheConfigObject');
  assert.equal(read.Action, 's3:GetObject');
  assert.match(JSON.stringify(read.Resource), /:s3:::configs\/pg-autouser\/config\.yaml"/);
});

test('signed identity: read on the JWKS parameter and object only, and none without them', () => {
  const stack = new Stack(new App(), 'Refs', { env: { account: '123456789012', region: 'us-east-1' } });
  const stored = synthWith({
    config: 'databases: []',
    identityJwksParameter: ssm.StringParameter.fromStringParameterName(stack, 'J', '/idp/jwks'),
    identityJwksObject: { bucket: s3.Bucket.fromBucketName(stack, 'JB', 'idp-keys'), key: 'teleport/jwks.json' },
  });
  const statements = policyStatements(stored);
  const parameter = statements.find((s) => s.Sid === 'ReadTheJwksParameter');
  assert.equal(parameter.Action, 'ssm:GetParameter');
  assert.match(JSON.stringify(parameter.Resource), /:parameter\/idp\/jwks"/);
  const object = statements.find((s) => s.Sid === 'ReadTheJwksObject');
  assert.equal(object.Action, 's3:GetObject');
  assert.match(JSON.stringify(object.Resource), /:s3:::idp-keys\/teleport\/jwks\.json"/);
  const without = policyStatements(synthWith({ config: 'databases: []' }));
  assert.ok(!without.some((s) => ['ReadTheJwksParameter', 'ReadTheJwksObject'].includes(s.Sid)));
});

test('exactly one config source', () => {
  assert.throws(() => synthWith({}), /exactly one of config, configParameter and configObject/);
  const stack = new Stack(new App(), 'Refs');
  assert.throws(() => synthWith({
    config: 'databases: []',
    configObject: { bucket: s3.Bucket.fromBucketName(stack, 'B', 'configs'), key: 'k' },
  }), /exactly one/);
});

test('session-start and session-end reserve sessionFunctionConcurrency each (default 20; 0: unreserved)', () => {
  const reserved = (stored: Template) => Object.fromEntries(
    (Object.values(stored.findResources('AWS::Lambda::Function')) as any[])
      .map((fn) => [fn.Properties.Description, fn.Properties.ReservedConcurrentExecutions]));
  assert.deepEqual(reserved(template), {
    'pg-autouser session-start': 20,
    'pg-autouser session-end': 20,
    'pg-autouser discovery': undefined,
    'pg-autouser reaper': undefined,
  });
  const five = reserved(synthWith({ config: 'databases: []', sessionFunctionConcurrency: 5 }));
  assert.deepEqual([five['pg-autouser session-start'], five['pg-autouser session-end']], [5, 5]);
  const unreserved = reserved(synthWith({ config: 'databases: []', sessionFunctionConcurrency: 0 }));
  assert.ok(Object.values(unreserved).every((value) => value === undefined), JSON.stringify(unreserved));
  assert.throws(() => synthWith({ config: 'databases: []', sessionFunctionConcurrency: -1 }), /whole number from 0/);
});
