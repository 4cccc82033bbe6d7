// AutoUserProvisioner: pg-autouser's four Lambda functions, the EventBridge rules that feed
// them (with retries and a dead-letter queue each), the discovery triggers, the reaper's
// schedule, alarms, and least-privilege IAM. It mirrors template.yaml; see the README's Deployment section.

import * as path from 'path';
import { Duration, Stack, ArnFormat } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { RustFunction } from 'cargo-lambda-cdk';
import { Construct } from 'constructs';

export interface AutoUserProvisionerProps {
  /** The VPC from which the functions reach the databases (and AWS APIs). */
  readonly vpc: ec2.IVpc;
  /** Subnets of the functions; default: the VPC's private subnets. */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** Security groups the databases accept PostgreSQL connections from. */
  readonly securityGroups: ec2.ISecurityGroup[];
  /** The pg-autouser config YAML (managed group, tag keys, databases, roles): AUTOUSER_CONFIG. */
  readonly config: string;
  /** The managed group; default: the config's (`teleport-auto-user` unless it says otherwise). */
  readonly managedGroup?: string;
  /** The RDS tag naming the admin; default: the config's (`teleport.dev/db-admin`). */
  readonly adminTagKey?: string;
  /** The RDS tag naming the admin's default database; default: the config's. */
  readonly adminDatabaseTagKey?: string;
  /** The admin the functions log in as with IAM authentication; rds-db:connect is limited to it. */
  readonly adminUserName?: string;
  /** Secrets Manager secrets holding admin passwords or certificates the functions may read. */
  readonly adminSecretArns?: string[];
  /** The bus for session events, audit events and discovery reports; default: a new bus. */
  readonly eventBus?: events.IEventBus;
  /** The `source` of the session events the rules route; default `autouser`. */
  readonly eventSource?: string;
  /** The `source` of audit events and discovery reports; default `autouser.audit`. */
  readonly auditSource?: string;
  /** Regions discovery searches; default: the stack's region. */
  readonly discoveryRegions?: string[];
  /** How often discovery sweeps; default every 15 minutes. */
  readonly discoverySchedule?: events.Schedule;
  /** How often the reaper closes sessions whose end was lost; default every 15 minutes. */
  readonly reaperSchedule?: events.Schedule;
  /** Default ARM_64. */
  readonly architecture?: lambda.Architecture;
  /** Alarms notify this topic when given. */
  readonly alarmTopic?: sns.ITopic;
  /** The Cargo workspace manifest; default: the repository's. */
  readonly manifestPath?: string;
}

// Memory and timeouts as recommended in BENCHMARKS.md: 512 MB buys the CPU share that keeps a
// warm start's own CPU time (under 1 ms on a full core) small; 30 s outlasts the functions'
// own bounds (connect 11 s, lock wait 10 s), which end a stuck call with a typed error.
const FUNCTIONS = {
  sessionStart: { binary: 'session-start', memorySize: 512, timeout: Duration.seconds(30) },
  sessionEnd: { binary: 'session-end', memorySize: 512, timeout: Duration.seconds(30) },
  discovery: { binary: 'discovery', memorySize: 256, timeout: Duration.minutes(5) },
  // Databases four at a time, each action bounded as session-end's; the next run picks up
  // what a timeout leaves.
  reaper: { binary: 'reaper', memorySize: 256, timeout: Duration.minutes(5) },
} as const;

export class AutoUserProvisioner extends Construct {
  public readonly sessionStart: lambda.IFunction;
  public readonly sessionEnd: lambda.IFunction;
  public readonly discovery: lambda.IFunction;
  public readonly reaper: lambda.IFunction;
  public readonly eventBus: events.IEventBus;
  public readonly deadLetterQueues: sqs.IQueue[] = [];

  constructor(scope: Construct, id: string, props: AutoUserProvisionerProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const adminUserName = props.adminUserName ?? 'teleport-admin';
    const eventSource = props.eventSource ?? 'autouser';
    this.eventBus = props.eventBus ?? new events.EventBus(this, 'EventBus');

    const role = new iam.Role(this, 'FunctionsRole', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: 'pg-autouser functions, least privilege',
    });
    this.grantLeastPrivilege(role, stack, adminUserName, props.adminSecretArns ?? []);

    const environment = {
      AUTOUSER_CONFIG: props.config,
      AUTOUSER_EVENT_SOURCE: eventSource,
      AUTOUSER_AUDIT_EVENT_BUS: this.eventBus.eventBusName,
      AUTOUSER_AUDIT_SOURCE: props.auditSource ?? 'autouser.audit',
      AUTOUSER_MANAGED_GROUP: props.managedGroup ?? '',
      AUTOUSER_ADMIN_TAG: props.adminTagKey ?? '',
      AUTOUSER_ADMIN_DATABASE_TAG: props.adminDatabaseTagKey ?? '',
      RUST_LOG: 'info',
    };
    const manifestPath = props.manifestPath ?? path.join(__dirname, '..', '..', '..', 'Cargo.toml');
    const make = (name: keyof typeof FUNCTIONS, extra: Record<string, string> = {}) => {
      const spec = FUNCTIONS[name];
      const fn = new RustFunction(this, name, {
        manifestPath,
        binaryName: spec.binary,
        architecture: props.architecture ?? lambda.Architecture.ARM_64,
        memorySize: spec.memorySize,
        timeout: spec.timeout,
        role,
        vpc: props.vpc,
        vpcSubnets: props.vpcSubnets,
        securityGroups: props.securityGroups,
        environment: { ...environment, ...extra },
        description: `pg-autouser ${spec.binary}`,
      });
      this.alarm(`${name}Errors`, `${spec.binary} failed`, fn.metricErrors({ period: Duration.minutes(5) }), props);
      return fn;
    };
    this.sessionStart = make('sessionStart');
    this.sessionEnd = make('sessionEnd');
    this.discovery = make('discovery', {
      AUTOUSER_DISCOVERY_REGIONS: (props.discoveryRegions ?? [stack.region]).join(','),
    });

    this.reaper = make('reaper');

    this.route('SessionStarted', this.sessionStart, props, {
      eventBus: this.eventBus,
      eventPattern: { source: [eventSource], detailType: ['Database Session Started'] },
    }, { retryAttempts: 8, maxEventAge: Duration.minutes(15) });
    this.route('SessionEnded', this.sessionEnd, props, {
      eventBus: this.eventBus,
      eventPattern: { source: [eventSource], detailType: ['Database Session Ended'] },
    }, { retryAttempts: 185, maxEventAge: Duration.hours(24) });

    const discoveryDlq = this.deadLetterQueue('Discovery', 'Discovery triggers could not be delivered', props);
    const discoveryTarget = new targets.LambdaFunction(this.discovery, {
      retryAttempts: 2,
      maxEventAge: Duration.minutes(10),
      deadLetterQueue: discoveryDlq,
    });
    new events.Rule(this, 'DiscoverySchedule', {
      description: 'pg-autouser discovery sweep',
      schedule: props.discoverySchedule ?? events.Schedule.rate(Duration.minutes(15)),
      targets: [discoveryTarget],
    });
    const rdsChanges = new events.Rule(this, 'RdsChanges', {
      description: 'RDS instance or cluster created, or RDS tags changed, to discovery',
      eventPattern: { source: ['aws.rds'] },
      targets: [discoveryTarget],
    });
    // `$or` is not in the typed EventPattern: the whole pattern replaces it on the resource.
    (rdsChanges.node.defaultChild as events.CfnRule).addPropertyOverride('EventPattern', RDS_CHANGE_PATTERN);

    // The reaper, on a schedule; a failed run is retried twice, and the next run repeats it.
    this.route('Reaper', this.reaper, props, {
      description: 'pg-autouser reaper run',
      schedule: props.reaperSchedule ?? events.Schedule.rate(Duration.minutes(15)),
    }, { retryAttempts: 2, maxEventAge: Duration.minutes(10) });
    // A database it could not reach, or a user it could not close or lock (its log says which).
    this.alarm('ReaperFailures', 'the reaper could not reach a database, or close or lock a user (see its log)',
      new cloudwatch.Metric({
        namespace: 'pg-autouser',
        metricName: 'ReaperFailures',
        dimensionsMap: { Function: 'reaper' },
        statistic: 'Sum',
        period: Duration.minutes(15),
      }), props);
  }

  private grantLeastPrivilege(role: iam.Role, stack: Stack, adminUserName: string, secretArns: string[]) {
    role.addManagedPolicy(
      iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole'),
    );
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'ConnectAsTheAdminOnly',
      actions: ['rds-db:connect'],
      resources: [`arn:${stack.partition}:rds-db:*:${stack.account}:dbuser:*/${adminUserName}`],
    }));
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'ReadRdsDatabasesAndTags',
      actions: ['rds:DescribeDBInstances', 'rds:DescribeDBClusters', 'rds:ListTagsForResource'],
      resources: [
        stack.formatArn({ service: 'rds', region: '*', resource: 'db', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME }),
        stack.formatArn({ service: 'rds', region: '*', resource: 'cluster', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME }),
      ],
    }));
    role.addToPolicy(new iam.PolicyStatement({
      sid: 'PutAuditEventsAndReports',
      actions: ['events:PutEvents'],
      resources: [this.eventBus.eventBusArn],
    }));
    if (secretArns.length > 0) {
      role.addToPolicy(new iam.PolicyStatement({
        sid: 'ReadTheAdminSecrets',
        actions: ['secretsmanager:GetSecretValue'],
        resources: secretArns,
      }));
    }
  }

  private route(
    name: string,
    fn: lambda.IFunction,
    props: AutoUserProvisionerProps,
    rule: events.RuleProps,
    retry: { retryAttempts: number; maxEventAge: Duration },
  ) {
    const dlq = this.deadLetterQueue(name, `${name} events could not be delivered to ${fn.node.id}`, props);
    new events.Rule(this, `${name}Rule`, {
      ...rule,
      targets: [new targets.LambdaFunction(fn, { ...retry, deadLetterQueue: dlq })],
    });
  }

  private deadLetterQueue(name: string, description: string, props: AutoUserProvisionerProps): sqs.Queue {
    const queue = new sqs.Queue(this, `${name}DeadLetterQueue`, {
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    this.deadLetterQueues.push(queue);
    this.alarm(`${name}DeadLetters`, description, queue.metricApproximateNumberOfMessagesVisible({
      period: Duration.minutes(5),
      statistic: 'Maximum',
    }), props);
    return queue;
  }

  private alarm(name: string, description: string, metric: cloudwatch.IMetric, props: AutoUserProvisionerProps) {
    const alarm = new cloudwatch.Alarm(this, `${name}Alarm`, {
      alarmDescription: description,
      metric,
      threshold: 0,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    if (props.alarmTopic) {
      alarm.addAlarmAction(new cloudwatchActions.SnsAction(props.alarmTopic));
    }
  }
}

/** The pattern of the RDS rule: instance created, cluster created, RDS tags changed. */
export const RDS_CHANGE_PATTERN = {
  source: ['aws.rds'],
  $or: [
    { 'detail-type': ['RDS DB Instance Event'], detail: { EventID: ['RDS-EVENT-0005'] } },
    { 'detail-type': ['RDS DB Cluster Event'], detail: { EventID: ['RDS-EVENT-0170'] } },
    {
      'detail-type': ['AWS API Call via CloudTrail'],
      detail: { eventSource: ['rds.amazonaws.com'], eventName: ['AddTagsToResource', 'RemoveTagsFromResource'] },
    },
  ],
};
