// DPOTrainer: the typed training loop over the native PreferenceTrainer. Steps run off the JS thread; train() is an
// async iterator of per-logging-step metrics, cancellable with an AbortSignal; checkpoints are atomic and resumable.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { callNative, callNativeSync, NativeMicroStep, NativeTrainerHandle } from '../native';
import { addon } from '../runtime';
import { Model } from '../model';
import { readRefCacheMeta, RefLogpCache, referenceIdentity, sequenceKey } from '../ref_cache';
import { checkWritableDir, replaceDirAtomic, writeFileAtomic, writeJsonAtomic } from '../fs_atomic';
import { DPOTrainerOptions, ResolvedDPOOptions, resolveDPOOptions } from './options';
import { learningRateAt } from './schedule';
import { countExamples, PairBatch, pairBatches } from './data_source';
import { DistEnv, readDistEnv } from './distributed';

/** One logging step's metrics, with TRL's names. */
export interface DPOMetrics {
  step: number;
  epoch: number;
  loss: number;
  'rewards/chosen': number;
  'rewards/rejected': number;
  'rewards/accuracies': number;
  'rewards/margins': number;
  'logps/chosen': number;
  'logps/rejected': number;
  'logits/chosen': number;
  'logits/rejected': number;
  grad_norm: number;
  learning_rate: number;
  tokens_per_second: number;
  skipped_steps: number;
  [key: string]: number;
}

export interface TrainerState {
  step: number; // optimizer steps done
  epoch: number; // current epoch (0-based)
  examplesInEpoch: number; // examples consumed in the current epoch
  nonFiniteSteps: number;
  totalSteps: number;
}

/** Running sums over a logging window. */
class MetricWindow {
  private n = 0;
  private pairs = 0;
  private s: Record<string, number> = {};
  private add(k: string, v: number) {
    this.s[k] = (this.s[k] ?? 0) + v;
  }
  addMicro(r: NativeMicroStep, refLogps: Float64Array | null) {
    const P = r.chosenRewards.length;
    this.n++;
    this.pairs += P;
    this.add('loss', r.loss);
    for (let i = 0; i < P; i++) {
      const c = r.chosenRewards[i], j = r.rejectedRewards[i];
      this.add('rewards/chosen', c);
      this.add('rewards/rejected', j);
      this.add('rewards/accuracies', c > j ? 1 : 0);
      this.add('rewards/margins', c - j);
      this.add('logps/chosen', r.policyLogps[i]);
      this.add('logps/rejected', r.policyLogps[P + i]);
      this.add('lc', r.logitsSum[i]);
      this.add('lr_', r.logitsSum[P + i]);
      this.add('cc', r.counts[i]);
      this.add('rc', r.counts[P + i]);
    }
    this.add('tokens', r.tokens);
    void refLogps;
  }
  addStep(gradNorm: number) {
    this.add('steps', 1);
    this.add('grad_norm', gradNorm);
  }
  get empty() {
    return this.n === 0;
  }
  private static readonly KEYS = ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected', 'lc', 'lr_', 'cc', 'rc', 'tokens', 'steps', 'grad_norm'];
  /** The window's sums (count, pairs, then KEYS), for an all-reduce over the ranks. */
  sums(): Float64Array {
    return Float64Array.from([this.n, this.pairs, ...MetricWindow.KEYS.map((k) => this.s[k] ?? 0)]);
  }
  /** A window holding the given sums (from sums(), e.g. summed over the ranks). */
  static fromSums(v: Float64Array): MetricWindow {
    const w = new MetricWindow();
    w.n = v[0];
    w.pairs = v[1];
    MetricWindow.KEYS.forEach((k, i) => (w.s[k] = v[2 + i]));
    return w;
  }
  get tokens() {
    return this.s.tokens ?? 0;
  }
  summary(): Record<string, number> {
    const p = Math.max(1, this.pairs);
    return {
      loss: this.s.loss / Math.max(1, this.n),
      'rewards/chosen': this.s['rewards/chosen'] / p,
      'rewards/rejected': this.s['rewards/rejected'] / p,
      'rewards/accuracies': this.s['rewards/accuracies'] / p,
      'rewards/margins': this.s['rewards/margins'] / p,
      'logps/chosen': this.s['logps/chosen'] / p,
      'logps/rejected': this.s['logps/rejected'] / p,
      'logits/chosen': this.s.lc / Math.max(1, this.s.cc),
      'logits/rejected': this.s.lr_ / Math.max(1, this.s.rc),
      grad_norm: (this.s.grad_norm ?? 0) / Math.max(1, this.s.steps ?? 0),
    };
  }
}

export class DPOTrainer implements AsyncDisposable {
  private trainer: NativeTrainerHandle | undefined;
  private cache: RefLogpCache | undefined;
  readonly state: TrainerState;
  /** Data-parallel settings (from the environment, see `torch-dpo launch`); undefined in a single process. */
  readonly dist: DistEnv | undefined;

  private constructor(
    readonly options: ResolvedDPOOptions,
    readonly policy: Model,
    readonly reference: Model | undefined,
    cache: RefLogpCache | undefined,
    trainer: NativeTrainerHandle,
    state: TrainerState,
    dist: DistEnv | undefined,
  ) {
    this.dist = dist;
    this.cache = cache;
    this.trainer = trainer;
    this.state = state;
  }

  /** Validates options, loads the policy (and reference / cache), resumes when asked. */
  static async create(input: DPOTrainerOptions): Promise<DPOTrainer> {
    const o = resolveDPOOptions(input);
    const dist = readDistEnv();
    await checkWritableDir(o.outputDir, 'outputDir');
    const resumeDir = o.resume ? findResumeDir(o) : undefined;
    // one GPU per process: a plain 'cuda' means this rank's local GPU
    const device = dist && o.device === 'cuda' ? (`cuda:${dist.localRank}` as typeof o.device) : o.device;
    const policy = await Model.load(resumeDir ?? o.policy, { device, dtype: o.dtype });
    let reference: Model | undefined;
    let cache: RefLogpCache | undefined;
    let trainer: NativeTrainerHandle | undefined;
    try {
      policy.requireTokenizer();
      if (o.reference) reference = await Model.load(o.reference, { device, dtype: o.dtype });
      if (o.refCache) {
        const referenceId = o.reference ? await referenceIdentity(o.reference) : undefined;
        cache = await openCache(o.refCache, referenceId);
      }
      trainer = callNativeSync('createTrainer', () => addon().createTrainer(policy.native, JSON.stringify(trainerConfig(o))));
      if (dist) {
        const t = trainer;
        await callNative(`joining the data-parallel group as rank ${dist.rank} of ${dist.worldSize} at ${dist.masterAddr}:${dist.masterPort}`, () =>
          t.joinDataParallel(dist.rank, dist.worldSize, dist.localRank, dist.masterAddr, dist.masterPort, dist.timeoutMs),
        );
      }
      const W = dist?.worldSize ?? 1;
      const totalSteps = o.maxSteps > 0 ? o.maxSteps : Math.max(1, Math.ceil((o.numTrainEpochs * Math.floor((await countExamples(o.data)) / W)) / (o.perDeviceTrainBatchSize * o.gradientAccumulationSteps)));
      let state: TrainerState = { step: 0, epoch: 0, examplesInEpoch: 0, nonFiniteSteps: 0, totalSteps };
      if (resumeDir) {
        state = readTrainerState(resumeDir);
        await callNative(`loading optimizer state from ${resumeDir}`, () => trainer!.loadState(path.join(resumeDir, 'optimizer.pt')));
      }
      return new DPOTrainer(o, policy, reference, cache, trainer, state, dist);
    } catch (e) {
      trainer?.dispose();
      policy.dispose();
      reference?.dispose();
      await cache?.close();
      throw e;
    }
  }

  private get native(): NativeTrainerHandle {
    if (!this.trainer) throw new Error('DPOTrainer was disposed');
    return this.trainer;
  }

  /** Reference log-probs of a batch (2B): from the cache, else the reference model (then stored), else null (reference-free). */
  private async referenceLogps(b: PairBatch): Promise<Float64Array | null> {
    const o = this.options;
    if (o.referenceFree) return null;
    const B = b.size;
    const keys = b.examples.flatMap((e) => [sequenceKey(e.prompt_ids, e.chosen_ids)]).concat(b.examples.map((e) => sequenceKey(e.prompt_ids, e.rejected_ids)));
    const out = new Float64Array(2 * B);
    if (this.cache && keys.every((k) => this.cache!.has(k))) {
      keys.forEach((k, i) => (out[i] = this.cache!.get(k)!.logp));
      return out;
    }
    if (!this.reference) {
      const missing = keys.findIndex((k) => !this.cache?.has(k));
      const ex = b.examples[missing % B];
      throw new Error(`${ex.source ?? o.data}: example #${ex.index + 1} of epoch ${this.state.epoch + 1} is missing from the reference cache ${o.refCache} and no reference model was given`);
    }
    const r = await this.reference.sequenceLogps(b.inputIds, b.attentionMask, b.labels, 2 * B, b.T, o.chunkRows);
    if (this.cache) {
      await this.cache.putMany(keys.map((k, i) => [k, { logp: r.logps[i], count: r.counts[i] }]));
    }
    return r.logps;
  }

  /**
   * Trains until maxSteps / numTrainEpochs; yields metrics every loggingSteps steps (and at the end), writes them to
   * outputDir/metrics.jsonl, checkpoints every saveSteps and at the end. Abort with `signal` (the last complete step
   * is kept; a checkpoint is written).
   */
  async *train(opts: { signal?: AbortSignal } = {}): AsyncGenerator<DPOMetrics> {
    const o = this.options;
    const st = this.state;
    const metricsFile = path.join(o.outputDir, 'metrics.jsonl');
    const warmup = Math.ceil(o.warmupRatio * st.totalSteps);
    let window = new MetricWindow();
    let windowStart = Date.now();
    const accum = o.gradientAccumulationSteps;
    const epochs = o.maxSteps > 0 ? Infinity : Math.ceil(o.numTrainEpochs);
    let micro = 0;
    let lastLogged = st.step;
    let stopped = false;
    while (st.step < st.totalSteps && st.epoch < epochs && !stopped) {
      let sawData = false;
      const shard = this.dist ? { rank: this.dist.rank, worldSize: this.dist.worldSize } : undefined;
      for await (const b of pairBatches(o, this.policy.requireTokenizer(), st.epoch, st.examplesInEpoch, undefined, shard)) {
        sawData = true;
        if (await this.anyRank(opts.signal?.aborted === true)) {
          stopped = true;
          break;
        }
        const ref = await this.referenceLogps(b);
        const r = await callNative('train step', () => this.native.accumulate(b.inputIds, b.attentionMask, b.labels, ref, 2 * b.size, b.T, 1 / accum));
        window.addMicro(r, ref);
        st.examplesInEpoch += b.size * (this.dist?.worldSize ?? 1); // every rank took a batch of this size
        micro++;
        if (micro % accum !== 0) continue;
        const lr = learningRateAt(st.step, st.totalSteps, o.learningRate, o.lrSchedulerType, warmup);
        const s = await callNative('optimizer step', () => this.native.step(lr, o.maxGradNorm));
        if (s.skipped) {
          st.nonFiniteSteps++;
          if (st.nonFiniteSteps > o.maxNonFiniteSteps) {
            throw new Error(`training stopped: ${st.nonFiniteSteps} steps had non-finite gradients (maxNonFiniteSteps ${o.maxNonFiniteSteps}); the last checkpoint in ${o.outputDir} is intact`);
          }
        } else {
          window.addStep(s.gradNorm);
        }
        st.step++;
        const done = st.step >= st.totalSteps;
        if (st.step % o.loggingSteps === 0 || done) {
          const m = this.metrics(await this.globalWindow(window), lr, windowStart);
          if (this.isMain) fs.appendFileSync(metricsFile, JSON.stringify(m) + '\n');
          lastLogged = st.step;
          window = new MetricWindow();
          windowStart = Date.now();
          yield m;
        }
        if (o.evalData && o.evalSteps > 0 && st.step % o.evalSteps === 0 && !done) yield { ...(await this.evaluate()) } as DPOMetrics;
        if (o.saveSteps > 0 && st.step % o.saveSteps === 0 && !done) await this.saveCheckpoint();
        if (done) break;
      }
      if (stopped || st.step >= st.totalSteps) break;
      if (!sawData && st.examplesInEpoch === 0) throw new Error(`${o.data}: no usable examples`);
      st.epoch++;
      st.examplesInEpoch = 0;
      micro = 0;
    }
    if (!window.empty && st.step > lastLogged) {
      const m = this.metrics(await this.globalWindow(window), learningRateAt(Math.min(st.step, st.totalSteps - 1), st.totalSteps, o.learningRate, o.lrSchedulerType, warmup), windowStart);
      if (this.isMain) fs.appendFileSync(metricsFile, JSON.stringify(m) + '\n');
      yield m;
    }
    if (o.evalData) yield { ...(await this.evaluate()) } as DPOMetrics;
    await this.cache?.flush();
    await this.saveCheckpoint();
  }

  /** Loss and reward metrics over evalData (no gradients), with TRL's eval_ prefix; appended to metrics.jsonl. */
  async evaluate(): Promise<Record<string, number>> {
    const o = this.options;
    if (!o.evalData) throw new Error('evaluate() needs the evalData option');
    const w = new MetricWindow();
    const src = { ...o, data: o.evalData, shuffle: false };
    for await (const b of pairBatches(src, this.policy.requireTokenizer(), 0, 0)) {
      const ref = await this.referenceLogps(b);
      w.addMicro(await callNative('evaluation', () => this.native.evaluate(b.inputIds, b.attentionMask, b.labels, ref, 2 * b.size, b.T)), ref);
    }
    if (w.empty) throw new Error(`${o.evalData}: no usable examples`);
    const m: Record<string, number> = { step: this.state.step };
    for (const [k, v] of Object.entries(w.summary())) if (k !== 'grad_norm') m[`eval_${k}`] = v;
    if (this.isMain) fs.appendFileSync(path.join(o.outputDir, 'metrics.jsonl'), JSON.stringify(m) + '\n');
    return m;
  }

  /** True on rank 0 (or a single process): the one process that writes metrics and checkpoints. */
  get isMain(): boolean {
    return !this.dist || this.dist.rank === 0;
  }

  /** Whether `flag` holds on any rank (every rank must call it at the same point). */
  private async anyRank(flag: boolean): Promise<boolean> {
    if (!this.dist) return flag;
    const v = await callNative('all-reduce of the stop flag', () => this.native.allreduceSum(Float64Array.of(flag ? 1 : 0)));
    return v[0] > 0;
  }

  /** The window summed over the ranks (metrics over the global batch). */
  private async globalWindow(w: MetricWindow): Promise<MetricWindow> {
    if (!this.dist) return w;
    return MetricWindow.fromSums(await callNative('all-reduce of metrics', () => this.native.allreduceSum(w.sums())));
  }

  private metrics(w: MetricWindow, lr: number, since: number): DPOMetrics {
    const st = this.state;
    const secs = Math.max(1e-3, (Date.now() - since) / 1000);
    return {
      step: st.step,
      epoch: st.epoch + st.examplesInEpoch / Math.max(1, (st.totalSteps * this.options.perDeviceTrainBatchSize * this.options.gradientAccumulationSteps) / Math.max(1, this.options.numTrainEpochs)),
      ...w.summary(),
      learning_rate: lr,
      tokens_per_second: w.tokens / secs,
      skipped_steps: st.nonFiniteSteps,
    } as DPOMetrics;
  }

  /**
   * Writes outputDir/checkpoint-<step> (HF model + optimizer + trainer state) atomically; returns its path. With
   * data parallelism every rank calls it: rank 0 writes (all ranks hold the same weights and optimizer state), the
   * others wait for it at a barrier.
   */
  async saveCheckpoint(): Promise<string> {
    const o = this.options;
    const final = path.join(o.outputDir, `checkpoint-${this.state.step}`);
    if (!this.isMain) {
      await callNative('waiting for rank 0 to write a checkpoint', () => this.native.barrier());
      return final;
    }
    try {
      await this.writeCheckpoint(final);
    } finally {
      if (this.dist) await callNative('checkpoint barrier', () => this.native.barrier());
    }
    return final;
  }

  private async writeCheckpoint(final: string): Promise<void> {
    const o = this.options;
    const tmp = path.join(o.outputDir, `.tmp-checkpoint-${this.state.step}-${process.pid}`);
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    await this.policy.save(tmp);
    await callNative('saving optimizer state', () => this.native.saveState(path.join(tmp, 'optimizer.pt')));
    await writeJsonAtomic(path.join(tmp, 'trainer_state.json'), { ...this.state, format: 'torch-dpo-trainer-state', version: 1 });
    await replaceDirAtomic(tmp, final);
    await writeFileAtomic(path.join(o.outputDir, 'latest'), path.basename(final) + '\n');
  }

  dispose(): void {
    this.trainer?.dispose();
    this.trainer = undefined;
    this.policy.dispose();
    this.reference?.dispose();
    void this.cache?.close();
    this.cache = undefined;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.trainer?.dispose();
    this.trainer = undefined;
    this.policy.dispose();
    this.reference?.dispose();
    await this.cache?.close();
    this.cache = undefined;
  }
}

export function trainerConfig(o: ResolvedDPOOptions) {
  return {
    loss: {
      terms: o.lossType.map((type, i) => ({ type, weight: o.lossWeights[i] })),
      beta: o.beta,
      labelSmoothing: o.labelSmoothing,
      referenceFree: o.referenceFree,
      simpoGamma: o.simpoGamma,
    },
    optimizer: { type: o.optimizer, weightDecay: o.weightDecay, beta1: o.adamBeta1, beta2: o.adamBeta2, eps: o.adamEpsilon, momentum: 0 },
    chunkRows: o.chunkRows,
  };
}

async function openCache(dir: string, referenceId: string | undefined): Promise<RefLogpCache> {
  if (referenceId) return RefLogpCache.open(dir, { referenceId, create: true });
  // No reference model: the cache must exist; its own identity is taken as given.
  if (!fs.existsSync(path.join(dir, 'meta.json'))) throw new Error(`${dir}: no reference cache there (meta.json missing); make one with \`torch-dpo precompute\` or pass a reference model`);
  const meta = await readRefCacheMeta(dir);
  return RefLogpCache.open(dir, { referenceId: meta.referenceId, create: false });
}

function findResumeDir(o: ResolvedDPOOptions): string | undefined {
  if (typeof o.resume === 'string') {
    if (!fs.existsSync(path.join(o.resume, 'trainer_state.json'))) throw new Error(`${o.resume}: not a checkpoint (trainer_state.json missing)`);
    return o.resume;
  }
  const dirs = fs.existsSync(o.outputDir)
    ? fs.readdirSync(o.outputDir).filter((d) => /^checkpoint-\d+$/.test(d) && fs.existsSync(path.join(o.outputDir, d, 'trainer_state.json')))
    : [];
  if (dirs.length === 0) return undefined;
  dirs.sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1]));
  return path.join(o.outputDir, dirs[dirs.length - 1]);
}

function readTrainerState(dir: string): TrainerState {
  const file = path.join(dir, 'trainer_state.json');
  let s: any;
  try {
    s = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: corrupted checkpoint state (${(e as Error).message})`);
  }
  for (const k of ['step', 'epoch', 'examplesInEpoch', 'nonFiniteSteps', 'totalSteps']) {
    if (!Number.isInteger(s[k]) || s[k] < 0) throw new Error(`${file}: corrupted checkpoint state (Expected a non-negative integer for ${k} but received ${JSON.stringify(s[k])})`);
  }
  return { step: s.step, epoch: s.epoch, examplesInEpoch: s.examplesInEpoch, nonFiniteSteps: s.nonFiniteSteps, totalSteps: s.totalSteps };
}
