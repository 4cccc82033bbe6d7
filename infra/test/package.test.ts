// The construct as another CDK app consumes it: `npm pack` of this package, installed from the
// tarball into a fresh app (its own package.json, depending on the tarball, aws-cdk-lib and
// constructs), which the CDK CLI synthesises with prebuilt functions (`functionsDir`), so no
// Rust is compiled. The zips are target/lambda-arm64's, which scripts/test builds before these
// tests; with CI=1 they must be there. Elsewhere, when they are absent, small stand-in zips
// laid out the same way are made in a temporary directory. Also `npx cdk synth` here, through
// cdk.json, with the same zips.

import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';

const INFRA = path.join(__dirname, '..', '..');
const REPOSITORY = path.join(INFRA, '..');
const BUILT_ZIPS = path.join(REPOSITORY, 'target', 'lambda-arm64');
const FUNCTIONS = ['session-start', 'session-end', 'discovery', 'reaper'];
const CDK = path.join(INFRA, 'node_modules', '.bin', 'cdk');
// No telemetry, no notices fetched from the internet, no version check.
const CDK_ENV = { ...process.env, CDK_DISABLE_CLI_TELEMETRY: 'true', CDK_DISABLE_VERSION_CHECK: 'true' };

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'pg-autouser-cdk-'));
after(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** The directory of the four functions' zips: the real build, or stand-ins outside CI. */
function functionsDir(): string {
  const missing = FUNCTIONS.filter((fn) => !fs.existsSync(path.join(BUILT_ZIPS, fn, 'bootstrap.zip')));
  if (missing.length === 0) {
    return BUILT_ZIPS;
  }
  if (process.env.CI === '1') {
    assert.fail(`no ${missing.map((fn) => `${BUILT_ZIPS}/${fn}/bootstrap.zip`).join(', ')}: scripts/test builds them `
      + 'with `cargo lambda build --release --arm64 --output-format zip --lambda-dir target/lambda-arm64` first');
  }
  const dir = path.join(scratch, 'lambda');
  for (const fn of FUNCTIONS) {
    fs.mkdirSync(path.join(dir, fn), { recursive: true });
    // A zip holding one `bootstrap`, as cargo lambda writes it; python3's zipfile makes it.
    execFileSync('python3', ['-c',
      'import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], "w") as z: z.writestr("bootstrap", sys.argv[2])',
      path.join(dir, fn, 'bootstrap.zip'), `#!/bin/sh\n# stand-in for ${fn}\n`]);
  }
  return dir;
}

const ZIPS = functionsDir();

/** The template of `stack` in the cloud assembly `outdir`. */
function readTemplate(outdir: string, stack: string): any {
  return JSON.parse(fs.readFileSync(path.join(outdir, `${stack}.template.json`), 'utf8'));
}

function ofType(template: any, type: string): [string, any][] {
  return Object.entries(template.Resources).filter(([, r]: [string, any]) => r.Type === type) as [string, any][];
}

/** Each function's asset is the zip of its binary from `ZIPS`, unchanged. */
function assertFunctionsFromZips(template: any, outdir: string) {
  const functions = ofType(template, 'AWS::Lambda::Function');
  assert.deepEqual(functions.map(([, f]) => f.Properties.Description).sort(),
    FUNCTIONS.map((fn) => `pg-autouser ${fn}`).sort());
  for (const [name, fn] of functions) {
    assert.equal(fn.Properties.Runtime, 'provided.al2023', name);
    assert.equal(fn.Properties.Handler, 'bootstrap', name);
    const binary = fn.Properties.Description.replace('pg-autouser ', '');
    const asset = path.join(outdir, fn.Metadata['aws:asset:path']);
    assert.ok(fs.readFileSync(asset).equals(fs.readFileSync(path.join(ZIPS, binary, 'bootstrap.zip'))),
      `${name}'s asset is ${binary}/bootstrap.zip`);
  }
}

test('npm pack: an app of its own installs the tarball and synthesises the construct from prebuilt zips', () => {
  // The test runs after `tsc` (npm test), so the package's build is current: no prepack again.
  const packed = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', scratch],
    { cwd: INFRA, encoding: 'utf8' });
  const [{ filename, files }] = JSON.parse(packed) as { filename: string; files: { path: string }[] }[];
  const packedFiles = files.map((f) => f.path);
  assert.ok(packedFiles.includes('dist/lib/index.js') && packedFiles.includes('dist/lib/index.d.ts'), `${packedFiles}`);
  assert.ok(!packedFiles.some((f) => f.startsWith('dist/test/') || f.startsWith('test/')), `no tests: ${packedFiles}`);

  const ours = JSON.parse(fs.readFileSync(path.join(INFRA, 'package.json'), 'utf8'));
  const app = path.join(scratch, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({
    name: 'consumer',
    version: '1.0.0',
    private: true,
    dependencies: {
      'pg-autouser-infra': `file:${path.join(scratch, filename)}`,
      'aws-cdk-lib': ours.devDependencies['aws-cdk-lib'],
      'constructs': ours.devDependencies['constructs'],
    },
  }, null, 2));
  // Reuse what this package's `npm ci` installed: the app's node_modules starts with copies of
  // the same aws-cdk-lib and constructs, which npm keeps (they satisfy the app's exact
  // versions), so it only installs the tarball and its dependencies, from its cache when it
  // can. Unpacking aws-cdk-lib again would take most of this test's time.
  fs.mkdirSync(path.join(app, 'node_modules'));
  for (const installed of ['aws-cdk-lib', 'constructs']) {
    const version = JSON.parse(fs.readFileSync(path.join(INFRA, 'node_modules', installed, 'package.json'), 'utf8')).version;
    assert.equal(version, ours.devDependencies[installed], `infra's node_modules holds ${installed} ${version}: run npm ci`);
    execFileSync('cp', ['-a', path.join(INFRA, 'node_modules', installed), path.join(app, 'node_modules')]);
  }
  execFileSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: app, stdio: 'pipe' });
  fs.writeFileSync(path.join(app, 'app.js'), `
const { App, Stack } = require('aws-cdk-lib');
const ec2 = require('aws-cdk-lib/aws-ec2');
const { AutoUserProvisioner } = require('pg-autouser-infra');
const app = new App();
const stack = new Stack(app, 'Consumer');
const vpc = new ec2.Vpc(stack, 'Vpc', { maxAzs: 2, natGateways: 1 });
const securityGroup = new ec2.SecurityGroup(stack, 'Functions', { vpc });
new AutoUserProvisioner(stack, 'AutoUser', {
  functionsDir: process.env.FUNCTIONS_DIR,
  vpc,
  securityGroups: [securityGroup],
  config: 'databases: [{name: orders, rds: {instance_id: orders-prod, region: us-east-1}}]\\n',
});
`);
  const outdir = path.join(app, 'cdk.out');
  execFileSync(CDK, ['synth', '--app', 'node app.js', '--output', outdir, '--no-notices', '--quiet'],
    { cwd: app, env: { ...CDK_ENV, FUNCTIONS_DIR: ZIPS }, stdio: 'pipe' });
  // The construct came from the tarball, not from this checkout.
  const installed = fs.realpathSync(path.join(app, 'node_modules', 'pg-autouser-infra'));
  assert.ok(!installed.startsWith(INFRA), installed);

  const template = readTemplate(outdir, 'Consumer');
  assertFunctionsFromZips(template, outdir);
  const rules = ofType(template, 'AWS::Events::Rule').map(([, r]) => r.Properties);
  assert.ok(rules.some((r) => r.EventPattern?.['detail-type']?.[0] === 'Database Session Started'), 'session-start rule');
  assert.ok(rules.some((r) => r.EventPattern?.['detail-type']?.[0] === 'Database Session Ended'), 'session-end rule');
  assert.ok(rules.some((r) => r.Description === 'pg-autouser reaper run'), 'reaper schedule');
  assert.equal(ofType(template, 'AWS::CloudWatch::Dashboard').length, 1);

  // Without functionsDir the packed construct has no Cargo workspace to build from: it says so.
  const withoutZips = fs.readFileSync(path.join(app, 'app.js'), 'utf8').replace('functionsDir: process.env.FUNCTIONS_DIR,', '');
  assert.throws(() => execFileSync('node', ['-e', withoutZips], { cwd: app, stdio: 'pipe' }),
    (e: any) => /no Cargo manifest at .*give functionsDir/s.test(String(e.stderr)));
});

test('a functionsDir without the zips is refused, naming the missing ones and the build command', () => {
  const app = path.join(scratch, 'app-without-zips');
  fs.mkdirSync(app);
  const script = `
const { App, Stack } = require('aws-cdk-lib');
const ec2 = require('aws-cdk-lib/aws-ec2');
const { AutoUserProvisioner } = require(${JSON.stringify(path.join(INFRA, 'dist', 'lib'))});
const stack = new Stack(new App(), 'S');
const vpc = new ec2.Vpc(stack, 'Vpc');
new AutoUserProvisioner(stack, 'A', { functionsDir: ${JSON.stringify(app)}, vpc, securityGroups: [], config: '' });
`;
  assert.throws(() => execFileSync('node', ['-e', script], { cwd: INFRA, stdio: 'pipe' }),
    (e: any) => /functionsDir has no .*session-start\/bootstrap\.zip.*cargo lambda build --release --arm64/s
      .test(String(e.stderr)));
});

test('npx cdk synth in infra/ synthesises the example app through cdk.json', () => {
  const outdir = path.join(scratch, 'example.out');
  // cdk.json's build step (tsc) already ran: npm test starts with it.
  execFileSync(CDK, ['synth', '--build', 'true', '-c', `functionsDir=${ZIPS}`, '--output', outdir, '--no-notices', '--quiet'],
    { cwd: INFRA, env: CDK_ENV, stdio: 'pipe' });
  assertFunctionsFromZips(readTemplate(outdir, 'PgAutoUser'), outdir);
});
