// An example app, run by the CDK CLI through cdk.json: `npx cdk synth` builds the functions
// with cargo-lambda (on PATH); `npx cdk synth -c functionsDir=../target/lambda-arm64` takes
// the zips `cargo lambda build --release --arm64 --output-format zip --lambda-dir
// target/lambda-arm64` wrote instead. `npx cdk deploy` deploys it, given AWS credentials.

import { App, Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { AutoUserProvisioner } from '../lib';

const app = new App({ outdir: process.env.CDK_OUTDIR ?? 'cdk.out' });
// With credentials the CLI sets CDK_DEFAULT_ACCOUNT and CDK_DEFAULT_REGION, and the stack is
// for that account and region; without, it is environment-agnostic, so that synthesis needs
// no AWS call (the VPC's availability zones become Fn::GetAZs).
const account = process.env.CDK_DEFAULT_ACCOUNT;
const stack = new Stack(app, 'PgAutoUser', {
  env: account ? { account, region: process.env.CDK_DEFAULT_REGION } : undefined,
});
const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 1 });
const databases = new ec2.SecurityGroup(stack, 'AutoUserFunctions', { vpc, description: 'pg-autouser functions' });
new AutoUserProvisioner(stack, 'AutoUser', {
  functionsDir: app.node.tryGetContext('functionsDir'),
  vpc,
  securityGroups: [databases],
  config: [
    'managed_group: teleport-auto-user',
    'databases:',
    '  - name: orders',
    '    rds: {instance_id: orders-prod, region: us-east-1}',
    'roles:',
    '  - kind: role',
    '    version: v7',
    '    metadata: {name: auto-db-users}',
    '    spec:',
    '      options: {create_db_user_mode: keep}',
    '      allow: {db_labels: {"*": "*"}, db_names: ["*"], db_roles: [reader]}',
  ].join('\n'),
});
app.synth();
