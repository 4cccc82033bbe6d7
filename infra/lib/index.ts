// AutoUserProvisioner: pg-autouser's four Lambda functions, the EventBridge rules that feed
// them (session events through an SQS queue each, with hours of retries and a dead-letter
// queue), the discovery triggers, the reaper's schedule, the bus policy that lets only the
// proxies put session events, alarms, and a least-privilege role per function. It mirrors
// template.yaml (whose comments give the arithmetic); see docs/deployment.md.
// The functions come from prebuilt zips (`functionsDir`), or are built from a Cargo workspace
// with cargo-lambda-cdk's RustFunction (`manifestPath`, default this checkout's).

import * as fs from 'fs';
import * as path from 'path';
import { Duration, Stack, ArnFormat } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as destinations from 'aws-cdk-lib/aws-lambda-destinations';
import * as eventSources from 'aws-cdk-lib/aws-lambda-event-sources';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { RustFunction } from 'cargo-lambda-cdk';
import { Construct } from 'constructs';

export interface AutoUserProvisionerProps {
  /** The VPC from which the functions reach the databases (and AWS APIs). */
  readonly vpc: ec2.IVpc;
  /** Subnets of the functions; default: the VPC's private subnets. */
  readonly vpcSubnets?: ec2.SubnetSelection;
  /** Security groups the databases accept PostgreSQL connections from. */
  readonly securityGroups: ec2.ISecurityGroup[];
  /**
   * The pg-autouser config YAML (managed group, tag keys, databases, roles): AUTOUSER_CONFIG.
   * Lambda limits a function's environment to 4 KB: for a larger config, use `configParameter`
   * or `configObject` instead. Exactly one of the three.
   */
  readonly config?: string;
  /**
   * An SSM parameter (String or SecureString) holding the config, read again when `configTtl`
   * has passed: AUTOUSER_CONFIG_SSM_PARAMETER. The functions may read this parameter only.
   */
  readonly configParameter?: ssm.IParameter;
  /** An S3 object holding the config, read again when it changes: AUTOUSER_CONFIG_S3_URI. */
  readonly configObject?: { readonly bucket: s3.IBucket; readonly key: string };
  /** The customer managed KMS key of the SecureString parameter or the S3 object, if any. */
  readonly configKey?: kms.IKey;
  /**
   * With signed identity: the SSM parameter holding an issuer's JWKS (the config's
   * `jwks_ssm_parameter`). The functions may read this parameter only.
   */
  readonly identityJwksParameter?: ssm.IParameter;
  /** With signed identity: the S3 object holding an issuer's JWKS (the config's `jwks_s3_uri`). */
  readonly identityJwksObject?: { readonly bucket: s3.IBucket; readonly key: string };
  /** How often, at most, the functions check a stored config for a new version; default 1 minute. */
  readonly configTtl?: Duration;
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
  /**
   * ARNs of the IAM roles (or users) of the proxies that put session events on the bus. The
   * bus policy denies the session detail-types to every other principal; default: nobody may
   * put them (direct invokes only).
   */
  readonly proxyPrincipalArns?: string[];
  /** ARNs allowed to send to the session queues besides the rules (to redrive a dead-letter queue). */
  readonly redrivePrincipalArns?: string[];
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
  /**
   * Prebuilt functions: a directory laid out as `cargo lambda build --release --arm64
   * --output-format zip --lambda-dir DIR` writes it, `DIR/<binary>/bootstrap.zip` for
   * session-start, session-end, discovery and reaper (built for `architecture`). With it
   * nothing is compiled at synthesis; without it the functions are built from `manifestPath`.
   */
  readonly functionsDir?: string;
  /**
   * The Cargo workspace manifest the functions are built from with cargo-lambda-cdk's
   * RustFunction (cargo-lambda on PATH), when `functionsDir` is not given; default: the
   * pg-autouser checkout this construct is compiled in.
   */
  readonly manifestPath?: string;
  /** The CloudWatch dashboard's name; default: one CloudFormation generates. */
  readonly dashboardName?: string;
  /**
   * The reserved concurrency of session-start and of session-end, each: how many containers of
   * each run at once, so how many admin connections a burst of sessions opens on a database
   * (one per warm container); invocations beyond it are throttled and retried. Default 20; 0
   * leaves both unreserved, in the account's shared pool. Size the admin's CONNECTION LIMIT to
   * match: `autouser preflight` recommends one (docs/deployment.md, "Connections under bursts").
   */
  readonly sessionFunctionConcurrency?: number;
}

/** `sessionFunctionConcurrency`'s default (preflight.rs sizes the admin's CONNECTION LIMIT from it). */
const DEFAULT_SESSION_FUNCTION_CONCURRENCY = 20;

// Memory and timeouts as recommended in BENCHMARKS.md: 512 MB buys the CPU share that keeps a
// warm start's own CPU time (under 1 ms on a full core) small; 30 s outlasts the functions'
// own bounds (connect 11 s, 13 s with the retries of a login refused for want of a slot, lock
// wait 10 s), which end a stuck call with a typed error.
const FUNCTIONS = {
  sessionStart: { binary: 'session-start', memorySize: 512, timeout: Duration.seconds(30) },
  sessionEnd: { binary: 'session-end', memorySize: 512, timeout: Duration.seconds(30) },
  discovery: { binary: 'discovery', memorySize: 256, timeout: Duration.minutes(5) },
  // Databases four at a time, each action bounded as session-end's; the next run picks up
  // what a timeout leaves.
  reaper: { binary: 'reaper', memorySize: 256, timeout: Duration.minutes(5) },
} as const;

const SESSION_DETAIL_TYPES = ['Database Session Started', 'Database Session Ended'];

/** The namespace of the functions' EMF metrics (metrics.rs). */
const METRICS_NAMESPACE = 'pg-autouser';

// A session queue's visibility timeout: 6 x the function's timeout (AWS's advice for SQS event
// sources) = 180 s, the pause between two attempts at a record. maxReceiveCount attempts make
// the retry window: ends 480 x 180 s = 24 h (beyond the longest regional outages on record),
// starts 120 x 180 s = 6 h (a start older than that is for a connection given up long ago).
const SESSION_VISIBILITY = Duration.seconds(6 * 30);
const SESSION_QUEUES = {
  SessionStarted: { detailType: 'Database Session Started', maxReceiveCount: 120 },
  SessionEnded: { detailType: 'Database Session Ended', maxReceiveCount: 480 },
} as const;

export class AutoUserProvisioner extends Construct {
  public readonly sessionStart: lambda.IFunction;
  public readonly sessionEnd: lambda.IFunction;
  public readonly discovery: lambda.IFunction;
  public readonly reaper: lambda.IFunction;
  public readonly eventBus: events.IEventBus;
  public readonly deadLetterQueues: sqs.IQueue[] = [];
  /** The queues between the session rules and their functions. */
  public readonly sessionQueues: sqs.IQueue[] = [];
  /** Every alarm the construct defines; all of them are on the dashboard. */
  public readonly alarms: cloudwatch.Alarm[] = [];
  /** The functions' metrics, the dead-letter queues' depth and the alarms, on one page. */
  public readonly dashboard: cloudwatch.Dashboard;

  constructor(scope: Construct, id: string, props: AutoUserProvisionerProps) {
    super(scope, id);
    const stack = Stack.of(this);
    const adminUserName = props.adminUserName ?? 'teleport-admin';
    const eventSource = props.eventSource ?? 'autouser';
    this.eventBus = props.eventBus ?? new events.EventBus(this, 'EventBus');

    const sources = [props.config, props.configParameter, props.configObject].filter((s) => s !== undefined);
    if (sources.length !== 1) {
      throw new Error('AutoUserProvisioner: give exactly one of config, configParameter and configObject');
    }
    const functionsPolicy = this.functionsPolicy(stack, adminUserName, props.adminSecretArns ?? []);
    this.configPolicy(functionsPolicy, props);
    this.busPolicy(props.proxyPrincipalArns ?? [], eventSource);

    const environment = {
      AUTOUSER_CONFIG: props.config ?? '',
      AUTOUSER_CONFIG_SSM_PARAMETER: props.configParameter?.parameterName ?? '',
      AUTOUSER_CONFIG_S3_URI: props.configObject
        ? `s3://${props.configObject.bucket.bucketName}/${props.configObject.key}` : '',
      AUTOUSER_CONFIG_TTL: `${(props.configTtl ?? Duration.minutes(1)).toSeconds()}s`,
      AUTOUSER_EVENT_SOURCE: eventSource,
      AUTOUSER_AUDIT_EVENT_BUS: this.eventBus.eventBusName,
      AUTOUSER_AUDIT_SOURCE: props.auditSource ?? 'autouser.audit',
      AUTOUSER_MANAGED_GROUP: props.managedGroup ?? '',
      AUTOUSER_ADMIN_TAG: props.adminTagKey ?? '',
      AUTOUSER_ADMIN_DATABASE_TAG: props.adminDatabaseTagKey ?? '',
      RUST_LOG: 'info',
    };
    const code = functionsCode(props);
    const sessionConcurrency = props.sessionFunctionConcurrency ?? DEFAULT_SESSION_FUNCTION_CONCURRENCY;
    if (!Number.isInteger(sessionConcurrency) || sessionConcurrency < 0) {
      throw new Error(`AutoUserProvisioner: sessionFunctionConcurrency must be a whole number from 0, not ${sessionConcurrency}`);
    }
    const make = (name: keyof typeof FUNCTIONS, extra: Record<string, string> = {}) => {
      const spec = FUNCTIONS[name];
      const role = new iam.Role(this, `${name}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        description: `pg-autouser ${spec.binary}`,
        managedPolicies: [
          functionsPolicy,
          iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole'),
        ],
      });
      const fnProps = {
        architecture: props.architecture ?? lambda.Architecture.ARM_64,
        memorySize: spec.memorySize,
        timeout: spec.timeout,
        // Bounds the admin connections a burst of cold containers opens (0: unreserved).
        reservedConcurrentExecutions: (name === 'sessionStart' || name === 'sessionEnd') && sessionConcurrency > 0
          ? sessionConcurrency : undefined,
        role,
        vpc: props.vpc,
        vpcSubnets: props.vpcSubnets,
        securityGroups: props.securityGroups,
        environment: { ...environment, ...extra },
        description: `pg-autouser ${spec.binary}`,
      };
      const fn = code.kind === 'zips'
        ? new lambda.Function(this, name, {
          ...fnProps,
          runtime: lambda.Runtime.PROVIDED_AL2023,
          handler: 'bootstrap',
          code: lambda.Code.fromAsset(path.join(code.dir, spec.binary, 'bootstrap.zip')),
        })
        : new RustFunction(this, name, { ...fnProps, manifestPath: code.manifestPath, binaryName: spec.binary });
      this.alarm(`${name}Errors`, `${spec.binary} failed`, fn.metricErrors({ period: Duration.minutes(5) }), props);
      return fn;
    };
    const sessionStart = make('sessionStart');
    const sessionEnd = make('sessionEnd');
    const discovery = make('discovery', {
      AUTOUSER_DISCOVERY_REGIONS: (props.discoveryRegions ?? [stack.region]).join(','),
    });
    const reaper = make('reaper');
    this.sessionStart = sessionStart;
    this.sessionEnd = sessionEnd;
    this.discovery = discovery;
    this.reaper = reaper;

    this.sessionRoute('SessionStarted', sessionStart, props);
    this.sessionRoute('SessionEnded', sessionEnd, props);

    const discoveryDlq = this.deadLetterQueue('Discovery', 'Discovery triggers could not be delivered, or discovery failed them three times', props);
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
    this.failedRunsTo(discovery, discoveryDlq);

    // The reaper, on a schedule; a failed run is retried twice, and the next run repeats it.
    const reaperDlq = this.route('Reaper', this.reaper, props, {
      description: 'pg-autouser reaper run',
      schedule: props.reaperSchedule ?? events.Schedule.rate(Duration.minutes(15)),
    }, { retryAttempts: 2, maxEventAge: Duration.minutes(10) });
    this.failedRunsTo(reaper, reaperDlq);
    // A database it could not reach, or a user it could not close or lock (its log says which).
    this.alarm('ReaperFailures', 'the reaper could not reach a database, or close or lock a user (see its log)',
      new cloudwatch.Metric({
        namespace: METRICS_NAMESPACE,
        metricName: 'ReaperFailures',
        dimensionsMap: { Function: 'reaper' },
        statistic: 'Sum',
        period: Duration.minutes(15),
      }), props);

    // A new version of the stored config that could not be loaded, by any function: they keep
    // the last good one, and their log says why.
    this.alarm('ConfigLoadFailures',
      'a new config (SSM or S3) could not be loaded; the functions keep the last good one (see their log)',
      new cloudwatch.MathExpression({
        expression: 'start + finish + discovery + reaper',
        label: 'ConfigLoadFailures, all functions',
        period: Duration.minutes(5),
        usingMetrics: Object.fromEntries(
          [['start', 'session-start'], ['finish', 'session-end'], ['discovery', 'discovery'], ['reaper', 'reaper']]
            .map(([id, fn]) => [id, new cloudwatch.Metric({
              namespace: METRICS_NAMESPACE,
              metricName: 'ConfigLoadFailures',
              dimensionsMap: { Function: fn },
              statistic: 'Sum',
              period: Duration.minutes(5),
            })]),
        ),
      }), props);

    this.dashboard = this.makeDashboard(props.dashboardName);
  }

  /** Read on the config's one parameter or object, and its key, and on the JWKS's; nothing wider. */
  private configPolicy(policy: iam.ManagedPolicy, props: AutoUserProvisionerProps) {
    if (props.configParameter) {
      policy.addStatements(new iam.PolicyStatement({
        sid: 'ReadTheConfigParameter',
        actions: ['ssm:GetParameter'],
        resources: [props.configParameter.parameterArn],
      }));
    }
    if (props.configObject) {
      policy.addStatements(new iam.PolicyStatement({
        sid: 'ReadTheConfigObject',
        actions: ['s3:GetObject'],
        resources: [props.configObject.bucket.arnForObjects(props.configObject.key)],
      }));
    }
    if (props.configKey) {
      policy.addStatements(new iam.PolicyStatement({
        sid: 'DecryptTheConfig',
        actions: ['kms:Decrypt'],
        resources: [props.configKey.keyArn],
      }));
    }
    if (props.identityJwksParameter) {
      policy.addStatements(new iam.PolicyStatement({
        sid: 'ReadTheJwksParameter',
        actions: ['ssm:GetParameter'],
        resources: [props.identityJwksParameter.parameterArn],
      }));
    }
    if (props.identityJwksObject) {
      policy.addStatements(new iam.PolicyStatement({
        sid: 'ReadTheJwksObject',
        actions: ['s3:GetObject'],
        resources: [props.identityJwksObject.bucket.arnForObjects(props.identityJwksObject.key)],
      }));
    }
  }

  /**
   * The operator's page, as template.yaml's: what the functions did (their EMF metrics,
   * namespace pg-autouser, dimension Function, and Kind for refusals and transient failures),
   * the dead-letter queues' depth, and every alarm. Only metrics the functions emit
   * (infra/test checks them against metrics.rs).
   */
  private makeDashboard(dashboardName: string | undefined): cloudwatch.Dashboard {
    const metric = (metricName: string, fn: string, options: cloudwatch.MetricOptions = {}) =>
      new cloudwatch.Metric({ namespace: METRICS_NAMESPACE, metricName, dimensionsMap: { Function: fn }, ...options });
    // One line per kind (and function): the kinds are the errors' own, not known here.
    const byKind = (metricName: string) => new cloudwatch.MathExpression({
      expression: `SEARCH('{${METRICS_NAMESPACE},Function,Kind} MetricName="${metricName}"', 'Sum', 300)`,
      label: "${PROP('Dim.Function')} ${PROP('Dim.Kind')}",
      period: Duration.minutes(5),
    });
    const fiveMinutes = { period: Duration.minutes(5), statistic: 'Sum' };
    const runs = { period: Duration.minutes(15), statistic: 'Sum' };
    const latency = (fn: string, statistic: string) =>
      metric('ProvisioningLatency', fn, { period: Duration.minutes(5), statistic, label: `${fn} ${statistic}` });
    const size = { width: 12, height: 6 };
    return new cloudwatch.Dashboard(this, 'Dashboard', {
      dashboardName,
      widgets: [
        [new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms, width: 24, height: 3 })],
        [
          new cloudwatch.GraphWidget({
            title: 'Activations, deactivations and drops', ...size,
            left: [
              metric('Activations', 'session-start', fiveMinutes),
              metric('Deactivations', 'session-end', fiveMinutes),
              metric('Drops', 'session-end', fiveMinutes),
            ],
          }),
          new cloudwatch.GraphWidget({
            title: 'Provisioning latency (ms), p50 and p99', ...size,
            left: [latency('session-start', 'p50'), latency('session-start', 'p99'),
              latency('session-end', 'p50'), latency('session-end', 'p99')],
          }),
        ],
        [
          new cloudwatch.GraphWidget({ title: 'Refusals by kind', ...size, left: [byKind('Refusals')] }),
          new cloudwatch.GraphWidget({
            title: 'Transient failures by kind (retried)', ...size, left: [byKind('TransientFailures')],
          }),
        ],
        [
          new cloudwatch.GraphWidget({
            title: 'Reaper', ...size,
            left: ['SessionsReaped', 'UsersLocked', 'ExpiredSessionsLeftOpen', 'UnownedLogins', 'ReaperFailures',
              'ActionsDeferred', 'DatabasesDeferred'].map((name) => metric(name, 'reaper', runs)),
          }),
          new cloudwatch.GraphWidget({
            title: 'Discovery', ...size,
            left: ['DatabasesReady', 'DatabasesNeedingAttention', 'RegionsNotListed']
              .map((name) => metric(name, 'discovery', { period: Duration.minutes(15), statistic: 'Maximum' })),
          }),
        ],
        [
          new cloudwatch.GraphWidget({
            title: 'Config loads that failed (the last good config stays in use)', width: 24, height: 6,
            left: ['session-start', 'session-end', 'discovery', 'reaper']
              .map((fn) => metric('ConfigLoadFailures', fn, fiveMinutes)),
          }),
        ],
        [
          new cloudwatch.GraphWidget({
            title: 'Dead-letter queues: messages waiting', width: 24, height: 6,
            left: this.deadLetterQueues.map((queue) => queue.metricApproximateNumberOfMessagesVisible({
              period: Duration.minutes(5),
              statistic: 'Maximum',
              label: (queue as sqs.Queue).node.id.replace(/DeadLetterQueue$/, ''),
            })),
          }),
        ],
      ],
    });
  }

  /** What all four functions use: resolve RDS databases, log in as the admin, put events on the bus. */
  private functionsPolicy(stack: Stack, adminUserName: string, secretArns: string[]): iam.ManagedPolicy {
    const policy = new iam.ManagedPolicy(this, 'FunctionsPolicy', { description: 'pg-autouser functions, least privilege' });
    policy.addStatements(new iam.PolicyStatement({
      sid: 'ConnectAsTheAdminOnly',
      actions: ['rds-db:connect'],
      resources: [`arn:${stack.partition}:rds-db:*:${stack.account}:dbuser:*/${adminUserName}`],
    }));
    // DescribeDBInstances/Clusters answer with the tags: nothing calls ListTagsForResource.
    policy.addStatements(new iam.PolicyStatement({
      sid: 'DescribeRdsDatabases',
      actions: ['rds:DescribeDBInstances', 'rds:DescribeDBClusters'],
      resources: [
        stack.formatArn({ service: 'rds', region: '*', resource: 'db', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME }),
        stack.formatArn({ service: 'rds', region: '*', resource: 'cluster', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME }),
      ],
    }));
    // An Aurora global database's secondary cluster is provisioned through the global
    // database's writer cluster, which only DescribeGlobalClusters names.
    policy.addStatements(new iam.PolicyStatement({
      sid: 'DescribeGlobalDatabases',
      actions: ['rds:DescribeGlobalClusters'],
      resources: [
        stack.formatArn({ service: 'rds', region: '', resource: 'global-cluster', resourceName: '*', arnFormat: ArnFormat.COLON_RESOURCE_NAME }),
      ],
    }));
    policy.addStatements(new iam.PolicyStatement({
      sid: 'PutAuditEventsAndReports',
      actions: ['events:PutEvents'],
      resources: [this.eventBus.eventBusArn],
    }));
    if (secretArns.length > 0) {
      policy.addStatements(new iam.PolicyStatement({
        sid: 'ReadTheAdminSecrets',
        actions: ['secretsmanager:GetSecretValue'],
        resources: secretArns,
      }));
    }
    return policy;
  }

  /**
   * Only the proxies may put session events: the Deny binds every principal, of this account
   * too; the Allow lets proxies of other accounts in.
   */
  private busPolicy(proxyPrincipalArns: string[], eventSource: string) {
    const sessionTypes = { 'events:detail-type': SESSION_DETAIL_TYPES };
    // CfnEventBusPolicy: EventBusPolicy passes its PolicyStatement on unrendered.
    new events.CfnEventBusPolicy(this, 'SessionEventsOnlyFromProxies', {
      eventBusName: this.eventBus.eventBusName,
      statementId: 'SessionEventsOnlyFromProxies',
      statement: new iam.PolicyStatement({
        sid: 'SessionEventsOnlyFromProxies',
        effect: iam.Effect.DENY,
        principals: [new iam.AnyPrincipal()],
        actions: ['events:PutEvents'],
        resources: [this.eventBus.eventBusArn],
        conditions: proxyPrincipalArns.length > 0
          ? { 'ForAnyValue:StringEquals': sessionTypes, 'ArnNotEquals': { 'aws:PrincipalArn': proxyPrincipalArns } }
          : { 'ForAnyValue:StringEquals': sessionTypes },
      }).toStatementJson(),
    });
    if (proxyPrincipalArns.length > 0) {
      new events.CfnEventBusPolicy(this, 'ProxiesMayPutSessionEvents', {
        eventBusName: this.eventBus.eventBusName,
        statementId: 'ProxiesMayPutSessionEvents',
        statement: new iam.PolicyStatement({
          sid: 'ProxiesMayPutSessionEvents',
          principals: proxyPrincipalArns.map((arn) => new iam.ArnPrincipal(arn)),
          actions: ['events:PutEvents'],
          resources: [this.eventBus.eventBusArn],
          conditions: { 'ForAllValues:StringEquals': { ...sessionTypes, 'events:source': [eventSource] } },
        }).toStatementJson(),
      });
    }
  }

  /**
   * A session rule -> a standard queue -> its function, with partial batch responses. Standard,
   * not FIFO: a rule's FIFO target has one static message group, so one failing record would
   * hold up every user, and no queue orders a start against its end (two rules, two
   * functions); the engine converges in any order. Failed async invokes of the function go to
   * the queue too, without Lambda's own retries (the queue's are longer).
   */
  private sessionRoute(name: keyof typeof SESSION_QUEUES, fn: lambda.Function, props: AutoUserProvisionerProps) {
    const spec = SESSION_QUEUES[name];
    const dlq = this.deadLetterQueue(name,
      `${spec.detailType} events could not be delivered to ${fn.node.id}'s queue, or failed there for ${spec.maxReceiveCount * SESSION_VISIBILITY.toSeconds() / 3600} hours`, props);
    const queue = new sqs.Queue(this, `${name}Queue`, {
      visibilityTimeout: SESSION_VISIBILITY,
      retentionPeriod: Duration.days(4),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      deadLetterQueue: { queue: dlq, maxReceiveCount: spec.maxReceiveCount },
    });
    this.sessionQueues.push(queue);
    const rule = new events.Rule(this, `${name}Rule`, {
      eventBus: this.eventBus,
      eventPattern: { source: [props.eventSource ?? 'autouser'], detailType: [spec.detailType] },
      // EventBridge's own retries cover SQS being unreachable.
      targets: [new targets.SqsQueue(queue, { retryAttempts: 185, maxEventAge: Duration.hours(24), deadLetterQueue: dlq })],
    });
    fn.addEventSource(new eventSources.SqsEventSource(queue, { batchSize: 10, reportBatchItemFailures: true }));
    fn.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: Duration.hours(6), onFailure: new destinations.SqsDestination(queue) });
    queue.addToResourcePolicy(new iam.PolicyStatement({
      sid: 'NoOtherSenders',
      effect: iam.Effect.DENY,
      principals: [new iam.AnyPrincipal()],
      actions: ['sqs:SendMessage'],
      resources: [queue.queueArn],
      conditions: {
        ArnNotEquals: {
          'aws:SourceArn': rule.ruleArn,
          'aws:PrincipalArn': [fn.role!.roleArn, ...(props.redrivePrincipalArns ?? [])],
        },
      },
    }));
    this.alarm(`${name}Backlog`, `${spec.detailType} events have waited over 15 minutes in ${fn.node.id}'s queue (see its log)`,
      queue.metricApproximateAgeOfOldestMessage({ period: Duration.minutes(5), statistic: 'Maximum' }), props, 900);
  }

  /** Discovery and the reaper: a run that failed Lambda's two retries lands in the dead-letter queue. */
  private failedRunsTo(fn: lambda.Function, dlq: sqs.IQueue) {
    fn.configureAsyncInvoke({ retryAttempts: 2, maxEventAge: Duration.hours(1), onFailure: new destinations.SqsDestination(dlq) });
  }

  private route(
    name: string,
    fn: lambda.IFunction,
    props: AutoUserProvisionerProps,
    rule: events.RuleProps,
    retry: { retryAttempts: number; maxEventAge: Duration },
  ): sqs.Queue {
    const dlq = this.deadLetterQueue(name, `${name} events could not be delivered to ${fn.node.id}, or failed three times`, props);
    new events.Rule(this, `${name}Rule`, {
      ...rule,
      targets: [new targets.LambdaFunction(fn, { ...retry, deadLetterQueue: dlq })],
    });
    return dlq;
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

  private alarm(name: string, description: string, metric: cloudwatch.IMetric, props: AutoUserProvisionerProps, threshold = 0) {
    const alarm = new cloudwatch.Alarm(this, `${name}Alarm`, {
      alarmDescription: description,
      metric,
      threshold,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    if (props.alarmTopic) {
      alarm.addAlarmAction(new cloudwatchActions.SnsAction(props.alarmTopic));
    }
    this.alarms.push(alarm);
  }
}

/**
 * Where the functions come from: `functionsDir`'s zips, each checked to exist; or a Cargo
 * manifest to build them from, which must exist (a packed copy of this construct has none of
 * its own).
 */
function functionsCode(props: AutoUserProvisionerProps):
  { kind: 'zips'; dir: string } | { kind: 'manifest'; manifestPath: string } {
  if (props.functionsDir !== undefined) {
    const dir = path.resolve(props.functionsDir);
    const missing = Object.values(FUNCTIONS).map((spec) => path.join(dir, spec.binary, 'bootstrap.zip'))
      .filter((zip) => !fs.existsSync(zip));
    if (missing.length > 0) {
      throw new Error(`AutoUserProvisioner: functionsDir has no ${missing.join(', ')}: build them with `
        + `\`cargo lambda build --release --arm64 --output-format zip --lambda-dir ${dir}\` in the pg-autouser `
        + 'checkout (--x86-64 for architecture X86_64)');
    }
    return { kind: 'zips', dir };
  }
  const manifestPath = props.manifestPath ?? path.join(__dirname, '..', '..', '..', 'Cargo.toml');
  if (!fs.existsSync(manifestPath)) {
    throw new Error(`AutoUserProvisioner: no Cargo manifest at ${manifestPath} to build the functions from: `
      + 'give functionsDir (prebuilt zips of `cargo lambda build --output-format zip`) or the manifestPath '
      + 'of a pg-autouser checkout');
  }
  return { kind: 'manifest', manifestPath };
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
