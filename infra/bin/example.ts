// An example app: `npm run synth` (needs cargo-lambda on PATH; it builds the functions).

import { App, Stack } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import { AutoUserProvisioner } from '../lib';

const app = new App({ outdir: process.env.CDK_OUTDIR ?? 'cdk.out' });
const stack = new Stack(app, 'PgAutoUser', {
  env: { account: process.env.CDK_DEFAULT_ACCOUNT ?? '123456789012', region: process.env.CDK_DEFAULT_REGION ?? 'us-east-1' },
});
const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 1 });
const databases = new ec2.SecurityGroup(stack, 'AutoUserFunctions', { vpc, description: 'pg-autouser functions' });
new AutoUserProvisioner(stack, 'AutoUser', {
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
