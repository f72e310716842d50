// Data-parallel training over c10d/gloo on loopback: `torch-dpo launch --nproc 2` against a single process with the
// global batch, a failing rank, and rendezvous errors (unreachable master, wrong world size, bad environment).
import test from 'ava';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { CLI, compareWeights, latest, makeModelDir, pairRecords, readWeights, ROOT, runCli, tmpDir, writeJsonl } from './helpers/fixtures';
import { readDistEnv, resolveDistBackend } from '../../lib/trainer/distributed';
import { orderedExamples } from '../../lib/trainer/data_source';

const work = tmpDir('distributed');
let policyDir = '';
let refDir = '';
let data = '';

test.before(async () => {
  policyDir = await makeModelDir(path.join(work, 'policy'), 3);
  refDir = await makeModelDir(path.join(work, 'ref'), 4);
  data = writeJsonl(path.join(work, 'pairs.jsonl'), pairRecords(9, 21)); // 9: the odd last example is dropped by 2 ranks
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function run(args: string[], env: Record<string, string> = {}, timeout = 240000) {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: ROOT, timeout, env: { ...process.env, ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, seconds: (Date.now() - t0) / 1000 };
}

const common = (out: string, steps = 2) => ['--policy', policyDir, '--reference', refDir, '--data', data, '--optimizer', 'sgd', '--learning-rate', '0.5',
  '--no-shuffle', '--max-steps', String(steps), '--dtype', 'float32', '--device', 'cpu', '--logging-steps', '1', '--output', out, '--no-progress', '--no-report'];

const readMetrics = (out: string) => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

// One process, batch 4, no group: the run the data-parallel runs are compared with (trained once).
let singleDir: string | undefined;
function singleRun(t: { is: (a: unknown, b: unknown, m?: string) => void }): string {
  if (singleDir) return singleDir;
  const single = path.join(work, 'single');
  const r1 = run(['train', ...common(single), '--batch-size', '4']);
  t.is(r1.code, 0, r1.stderr);
  singleDir = single;
  return single;
}

test.serial('launch --nproc 2 with batch 2 ends with the weights and metrics of one process with batch 4', async (t) => {
  const single = singleRun(t);
  const dp = path.join(work, 'dp');
  const port = await freePort();
  const r2 = run(['launch', '--nproc', '2', '--master-port', String(port), '--', 'train', ...common(dp), '--batch-size', '2'], { TORCH_DPO_DIST_TIMEOUT_MS: '60000' });
  t.is(r2.code, 0, r2.stderr + r2.stdout);
  t.regex(r2.stdout, /\[rank 0\] /);
  t.regex(r2.stdout, /\[rank 1\] /);
  const a = readWeights(latest(dp));
  const b = readWeights(latest(single));
  const init = readWeights(policyDir);
  const moved = compareWeights(b, init);
  t.true(moved.maxRel > 1e-3, `training must change the weights (max rel change ${moved.maxRel})`);
  const cmp = compareWeights(a, b);
  t.log(`2 ranks × batch 2 vs 1 process × batch 4: max relative weight difference ${cmp.maxRel.toExponential(2)}; weights moved by ${moved.maxRel.toExponential(2)}`);
  t.true(cmp.maxRel <= 1e-6, `weights differ by ${cmp.maxRel}`);
  // rank 0 alone wrote metrics: one line per step, over the global batch (4 pairs)
  const md = readMetrics(dp), ms = readMetrics(single);
  t.is(md.length, 2);
  t.is(ms.length, 2);
  for (let i = 0; i < 2; i++) {
    for (const k of ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'logps/chosen', 'grad_norm']) {
      t.true(Math.abs(md[i][k] - ms[i][k]) <= 1e-5 * Math.max(1, Math.abs(ms[i][k])), `step ${i + 1} ${k}: ${md[i][k]} vs ${ms[i][k]}`);
    }
  }
  const state = JSON.parse(fs.readFileSync(path.join(latest(dp), 'trainer_state.json'), 'utf8'));
  t.is(state.examplesInEpoch, 8, 'examples counted over both ranks');
  t.deepEqual(fs.readdirSync(dp).filter((d) => d.startsWith('checkpoint-')), ['checkpoint-2']);
});

test.serial('a group of one (launch --nproc 1: real gloo collectives, overlapped or not) ends with exactly the weights of no group', async (t) => {
  const single = singleRun(t);
  const b = readWeights(latest(single));
  for (const overlap of [true, false]) {
    const out = path.join(work, overlap ? 'one-rank' : 'one-rank-no-overlap');
    const port = await freePort();
    const r = run(['launch', '--nproc', '1', '--master-port', String(port), '--', 'train', ...common(out), '--batch-size', '4', '--dist-backend', 'gloo',
      ...(overlap ? [] : ['--no-overlap-grad-sync'])], { TORCH_DPO_DIST_TIMEOUT_MS: '60000' });
    t.is(r.code, 0, r.stderr + r.stdout);
    const cmp = compareWeights(readWeights(latest(out)), b);
    t.log(`1 rank (overlap ${overlap}) vs no group: max relative weight difference ${cmp.maxRel}`);
    t.is(cmp.maxRel, 0);
    t.deepEqual(readMetrics(out).map((m) => m.loss), readMetrics(single).map((m) => m.loss));
  }
});

test('the process-group backend: auto picks nccl on CUDA when built with it, else gloo; impossible choices are named', (t) => {
  t.is(resolveDistBackend('auto', 'cpu', ['gloo', 'nccl']), 'gloo');
  t.is(resolveDistBackend('auto', 'cuda:1', ['gloo', 'nccl']), 'nccl');
  t.is(resolveDistBackend('auto', 'cuda:0', ['gloo']), 'gloo');
  t.is(resolveDistBackend('auto', 'cuda', ['nccl']), 'nccl');
  t.is(resolveDistBackend('gloo', 'cuda:0', ['gloo', 'nccl']), 'gloo');
  t.throws(() => resolveDistBackend('nccl', 'cpu', ['gloo', 'nccl']), { message: `Expected a CUDA device with distBackend 'nccl' (NCCL reduces GPU memory) for device but received "cpu"` });
  t.throws(() => resolveDistBackend('nccl', 'cuda:0', ['gloo']), { message: /Expected a backend this build has \(gloo; 'nccl' needs a CUDA libtorch with NCCL and nccl\.h/ });
  t.throws(() => resolveDistBackend('auto', 'cpu', []), { message: /Expected a backend this build has \(none; 'gloo' needs gloo headers/ });
});

test.serial('--dist-backend nccl on the CPU is refused before any rendezvous, naming the device', async (t) => {
  const port = await freePort();
  const r = run(['train', ...common(path.join(work, 'nccl-cpu')), '--batch-size', '2', '--dist-backend', 'nccl'],
    { WORLD_SIZE: '1', RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), TORCH_DPO_DIST_TIMEOUT_MS: '2000' });
  t.not(r.code, 0);
  t.regex(r.stderr, /Expected a CUDA device with distBackend 'nccl' .* for device but received "cpu"/);
  const bad = run(['train', ...common(path.join(work, 'bad-backend')), '--batch-size', '2', '--dist-backend', 'mpi']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /Expected one of 'auto', 'gloo', 'nccl' for distBackend but received "mpi"/);
});

test.serial('a rank that dies makes launch stop the others and fail naming it', async (t) => {
  const out = path.join(work, 'killed');
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, 'launch', '--nproc', '2', '--master-port', String(port), '--', 'train', ...common(out, 100000), '--batch-size', '1'], { cwd: ROOT, env: { ...process.env, TORCH_DPO_DIST_TIMEOUT_MS: '60000' } });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const t0 = Date.now();
  while (!/\[rank 1\] train \d+\//.test(stdout)) {
    if (Date.now() - t0 > 120000 || child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.regex(stdout, /\[rank 1\] train \d+\//, stderr);
  // find rank 1 among the launcher's children by its environment
  const kids = spawnSync('ps', ['-o', 'pid=', '--ppid', String(child.pid)], { encoding: 'utf8' }).stdout.trim().split(/\s+/).map(Number);
  const rank1 = kids.find((pid) => fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes('RANK=1'));
  t.truthy(rank1, `rank 1 among ${kids}`);
  process.kill(rank1!, 'SIGKILL');
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.not(code, 0);
  t.regex(stderr, /rank 1 \(of 2\) was killed by SIGKILL/);
  for (const pid of kids) t.throws(() => process.kill(pid, 0), undefined, `rank process ${pid} must be gone`);
  t.log(stderr.trim().split('\n').pop());
});

test.serial('unreachable master and a wrong world size fail within the timeout, naming master and world size', async (t) => {
  const port = await freePort();
  const env = { WORLD_SIZE: '2', RANK: '1', LOCAL_RANK: '1', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), TORCH_DPO_DIST_TIMEOUT_MS: '2000' };
  const r = run(['train', ...common(path.join(work, 'unreachable')), '--batch-size', '2'], env);
  t.not(r.code, 0);
  t.regex(r.stderr, new RegExp(`rank 1 of world size 2 \\(master 127\\.0\\.0\\.1:${port}`));
  t.true(r.seconds < 60, `took ${r.seconds}s`);
  // launch believes there are 2 nodes (world size 4) but only this node's 2 ranks come
  const port2 = await freePort();
  const l = run(['launch', '--nproc', '2', '--nnodes', '2', '--master-port', String(port2), '--', 'train', ...common(path.join(work, 'wrongws')), '--batch-size', '2'],
    { TORCH_DPO_DIST_TIMEOUT_MS: '2000' });
  t.not(l.code, 0);
  t.regex(l.stderr, /torch-dpo: rank [01] \(of 4\) exited with code 1/);
  t.regex(l.stderr, /world size 4/);
  t.true(l.seconds < 90, `took ${l.seconds}s`);
  t.log(l.stderr.trim().split('\n').pop());
});

test('the torchrun environment is validated, naming the variable', (t) => {
  t.is(readDistEnv({}), undefined);
  // WORLD_SIZE=1 (torchrun --nproc 1) is a group of one and needs the rest of the contract
  t.deepEqual(readDistEnv({ WORLD_SIZE: '1', RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '29500' }),
    { rank: 0, worldSize: 1, localRank: 0, masterAddr: '127.0.0.1', masterPort: 29500, timeoutMs: 1800000 });
  t.throws(() => readDistEnv({ WORLD_SIZE: '1' }), { message: /for environment variable RANK but received undefined/ });
  t.deepEqual(readDistEnv({ WORLD_SIZE: '4', RANK: '3', LOCAL_RANK: '1', MASTER_ADDR: 'node0', MASTER_PORT: '29501' }),
    { rank: 3, worldSize: 4, localRank: 1, masterAddr: 'node0', masterPort: 29501, timeoutMs: 1800000 });
  t.throws(() => readDistEnv({ WORLD_SIZE: '2', RANK: '2', MASTER_ADDR: 'h', MASTER_PORT: '1' }), { message: 'Expected an integer in [0, 1] for environment variable RANK but received "2"' });
  t.throws(() => readDistEnv({ WORLD_SIZE: 'x' }), { message: /environment variable WORLD_SIZE but received "x"/ });
  t.throws(() => readDistEnv({ WORLD_SIZE: '2', RANK: '0', MASTER_PORT: '1' }), { message: /for environment variable MASTER_ADDR/ });
  t.throws(() => readDistEnv({ WORLD_SIZE: '2', RANK: '0', MASTER_ADDR: 'h', MASTER_PORT: '0' }), { message: /\[1, 65535\] for environment variable MASTER_PORT/ });
  const r = runCli(['launch', '--nproc', '0', '--', 'train']);
  t.not(r.code, 0);
  t.regex(r.stderr, /--nproc/);
});

test.serial('SIGINT to launch stops every rank at the same step with a checkpoint, exit 0', async (t) => {
  const out = path.join(work, 'sigint');
  const port = await freePort();
  const child = spawn(process.execPath, [CLI, 'launch', '--nproc', '2', '--master-port', String(port), '--', 'train', ...common(out, 100000), '--batch-size', '1'],
    { cwd: ROOT, env: { ...process.env, TORCH_DPO_DIST_TIMEOUT_MS: '60000' } });
  let stdout = '', stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const t0 = Date.now();
  while (!/\[rank 1\] train [3-9]\d*\//.test(stdout) && Date.now() - t0 < 120000 && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
  child.kill('SIGINT');
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.is(code, 0, stderr);
  const state = JSON.parse(fs.readFileSync(path.join(latest(out), 'trainer_state.json'), 'utf8'));
  t.true(state.step >= 3, `stopped at step ${state.step}`);
  for (const r of [0, 1]) t.regex(stdout, new RegExp(`\\[rank ${r}\\] done: ${state.step} steps`), stdout);
});

test.serial('2 ranks stopped by SIGINT and resumed end with the weights of an uninterrupted 2-rank run', async (t) => {
  const steps = 40; // 9 examples, 2 ranks, batch 1: 4 steps an epoch, so this crosses epochs
  const full = path.join(work, 'resume-full');
  const r = run(['launch', '--nproc', '2', '--master-port', String(await freePort()), '--', 'train', ...common(full, steps), '--batch-size', '1', '--learning-rate', '0.05'],
    { TORCH_DPO_DIST_TIMEOUT_MS: '60000' });
  t.is(r.code, 0, r.stderr);
  const out = path.join(work, 'resume-cut');
  const child = spawn(process.execPath, [CLI, 'launch', '--nproc', '2', '--master-port', String(await freePort()), '--', 'train', ...common(out, steps), '--batch-size', '1',
    '--learning-rate', '0.05'], { cwd: ROOT, env: { ...process.env, TORCH_DPO_DIST_TIMEOUT_MS: '60000' } });
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  const t0 = Date.now();
  while (!/\[rank 1\] train 5\//.test(stdout) && Date.now() - t0 < 120000 && child.exitCode === null) await new Promise((res) => setTimeout(res, 20));
  child.kill('SIGINT');
  t.is(await new Promise<number | null>((res) => child.on('exit', (c) => res(c))), 0);
  const cut = JSON.parse(fs.readFileSync(path.join(latest(out), 'trainer_state.json'), 'utf8'));
  t.log(`interrupted at step ${cut.step} (epoch ${cut.epoch}, ${cut.examplesInEpoch} examples into it)`);
  t.true(cut.step < steps, 'the run must have been interrupted');
  if (cut.examplesInEpoch === 0) t.log('(interrupted at an epoch boundary this time)');
  const r2 = run(['launch', '--nproc', '2', '--master-port', String(await freePort()), '--', 'train', ...common(out, steps), '--batch-size', '1', '--learning-rate', '0.05', '--resume'],
    { TORCH_DPO_DIST_TIMEOUT_MS: '60000' });
  t.is(r2.code, 0, r2.stderr);
  const cmp = compareWeights(readWeights(latest(out)), readWeights(latest(full)));
  t.true(cmp.maxRel <= 1e-6, `resumed vs uninterrupted differ by ${cmp.maxRel}`);
  t.is(path.basename(latest(out)), `checkpoint-${steps}`);
});

// Resume onto another world size: a checkpoint counts examples over all ranks, so a run saved by 2 ranks × batch 2
// continues in 1 process × batch 4 (the same global batch) and the reverse, ending with the weights of the
// uninterrupted run; AdamW's moments travel in the checkpoint.
test.serial('checkpoints resume on a different world size (2 ranks -> 1 process and 1 -> 2) with the uninterrupted weights', async (t) => {
  const adam = ['--optimizer', 'adamw', '--learning-rate', '0.01', '--save-steps', '1'];
  const env = { TORCH_DPO_DIST_TIMEOUT_MS: '60000' };
  const two = path.join(work, 'ws-two');
  const r2 = run(['launch', '--nproc', '2', '--master-port', String(await freePort()), '--', 'train', ...common(two), ...adam, '--batch-size', '2'], env);
  t.is(r2.code, 0, r2.stderr);
  const one = path.join(work, 'ws-one');
  const r1 = run(['train', ...common(one), ...adam, '--batch-size', '4']);
  t.is(r1.code, 0, r1.stderr);
  const twoThenOne = path.join(work, 'ws-2to1');
  const a = run(['train', ...common(twoThenOne), ...adam, '--batch-size', '4', '--resume', path.join(two, 'checkpoint-1')]);
  t.is(a.code, 0, a.stderr);
  const oneThenTwo = path.join(work, 'ws-1to2');
  const b = run(['launch', '--nproc', '2', '--master-port', String(await freePort()), '--', 'train', ...common(oneThenTwo), ...adam, '--batch-size', '2', '--resume', path.join(one, 'checkpoint-1')], env);
  t.is(b.code, 0, b.stderr);
  const moved = compareWeights(readWeights(path.join(two, 'checkpoint-2')), readWeights(path.join(two, 'checkpoint-1')));
  t.true(moved.maxRel > 1e-3, `the second step must change the weights (${moved.maxRel})`);
  for (const [name, resumed, full] of [['2 -> 1', twoThenOne, two], ['1 -> 2', oneThenTwo, one]] as const) {
    t.is(path.basename(latest(resumed)), 'checkpoint-2');
    const cmp = compareWeights(readWeights(latest(resumed)), readWeights(path.join(full, 'checkpoint-2')));
    t.log(`${name}: max relative weight difference to the uninterrupted run ${cmp.maxRel.toExponential(2)}`);
    t.true(cmp.maxRel <= 1e-5, `${name}: ${cmp.maxRel}`);
    const st = JSON.parse(fs.readFileSync(path.join(latest(resumed), 'trainer_state.json'), 'utf8'));
    t.is(st.examplesInEpoch, 8);
  }
});

test('sharding: every example once per epoch across ranks; a skip that is not a multiple of the world size starts at the next group', async (t) => {
  async function* ten() {
    for (let i = 0; i < 10; i++) yield { v: i };
  }
  const o = { shuffle: false, shuffleBufferSize: 1, seed: 0, data: 'mem' };
  const take = async (rank: number, W: number, skip: number) => {
    const got: number[] = [];
    for await (const e of orderedExamples(ten(), o, 0, skip, { rank, worldSize: W })) {
      t.is(e.index, e.v);
      got.push(e.v);
    }
    return got;
  };
  t.deepEqual(await take(0, 3, 0), [0, 3, 6]); // 10 = 3 groups of 3 + 1 dropped
  t.deepEqual(await take(1, 3, 0), [1, 4, 7]);
  t.deepEqual(await take(2, 3, 0), [2, 5, 8]);
  // a checkpoint of a 1-process run after 3 examples, resumed on 2 ranks: both start at example 4
  t.deepEqual(await take(0, 2, 3), [4, 6, 8]);
  t.deepEqual(await take(1, 2, 3), [5, 7, 9]);
  t.deepEqual(await take(0, 1, 3), [3, 4, 5, 6, 7, 8, 9]);
});

test.serial('LoRA under launch: 2 ranks × batch 2 train the adapters of 1 process × batch 4 (overlapped sync of the adapter gradients)', async (t) => {
  const lora = ['--lora-r', '4', '--lora-alpha', '8']; // SGD (common): AdamW would amplify float32 rounding where a gradient is ~0
  const single = path.join(work, 'lora-single');
  const r1 = run(['train', ...common(single), ...lora, '--batch-size', '4']);
  t.is(r1.code, 0, r1.stderr);
  const dp = path.join(work, 'lora-dp');
  const r2 = run(['launch', '--nproc', '2', '--master-port', String(await freePort()), '--', 'train', ...common(dp), ...lora, '--batch-size', '2'], { TORCH_DPO_DIST_TIMEOUT_MS: '60000' });
  t.is(r2.code, 0, r2.stderr);
  const a = readWeights(latest(dp), 'adapter_model.safetensors'), b = readWeights(latest(single), 'adapter_model.safetensors');
  const moved = [...b].filter(([k]) => k.includes('lora_B')).some(([, v]) => v.some((x) => x !== 0));
  t.true(moved, 'training must move lora_B away from zero');
  const cmp = compareWeights(a, b);
  t.log(`adapters: 2 ranks vs 1 process max relative difference ${cmp.maxRel.toExponential(2)} over ${a.size} tensors`);
  t.true(cmp.maxRel <= 1e-5, `adapters differ by ${cmp.maxRel}`);
});
