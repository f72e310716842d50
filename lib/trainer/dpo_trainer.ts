// DPOTrainer: the typed training loop over the native PreferenceTrainer. Steps run off the JS thread; train() is an
// async iterator of per-logging-step metrics, cancellable with an AbortSignal; checkpoints are atomic and resumable.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { callNative, callNativeSync, NativeTrainerHandle } from '../native';
import { addon, runtimeInfo } from '../runtime';
import { Model } from '../model';
import { readRefCacheMeta, RefLogpCache, referenceIdentity, sequenceKey } from '../ref_cache';
import { checkWritableDir, replaceDirAtomic, writeFileAtomic, writeJsonAtomic } from '../fs_atomic';
import { DPOTrainerOptions, ResolvedDPOOptions, resolveDPOOptions } from './options';
import { learningRateAt } from './schedule';
import { countExamples, PairBatch, pairBatches, Shard } from './data_source';
import { countUnpairedExamples, KTOBatch, ktoBatches } from './kto_data';
import { KTOMetricWindow, PairMetricWindow, Window } from './metrics';
import { DistEnv, readDistEnv, resolveDistBackend } from './distributed';

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
    const policy = await Model.load((o.lora ? undefined : resumeDir) ?? o.policy, { device, dtype: o.dtype, ...(o.reward ? { head: 'score' as const, seed: o.seed } : {}) });
    let reference: Model | undefined;
    let cache: RefLogpCache | undefined;
    let trainer: NativeTrainerHandle | undefined;
    try {
      policy.requireTokenizer();
      // LoRA: base weights from `policy`; the adapter of the checkpoint when resuming, else fresh ones.
      if (o.lora) await (resumeDir ? policy.loadAdapter(resumeDir) : policy.addLora(o.lora, o.seed));
      if (o.reference) reference = await Model.load(o.reference, { device, dtype: o.dtype });
      if (o.refCache) {
        const refDir = o.reference ?? (o.lora ? o.policy : undefined); // with LoRA: the base model (adapters off)
        const referenceId = refDir ? await referenceIdentity(refDir) : undefined;
        cache = await openCache(o.refCache, referenceId);
      }
      trainer = callNativeSync('createTrainer', () => addon().createTrainer(policy.native, JSON.stringify(trainerConfig(o))));
      if (dist) {
        const t = trainer;
        const backend = resolveDistBackend(o.distBackend, device, runtimeInfo().distBackends);
        await callNative(`joining the ${backend} data-parallel group as rank ${dist.rank} of ${dist.worldSize} at ${dist.masterAddr}:${dist.masterPort}`, () =>
          t.joinDataParallel(dist.rank, dist.worldSize, dist.localRank, dist.masterAddr, dist.masterPort, dist.timeoutMs, o.overlapGradSync, backend),
        );
      }
      const W = dist?.worldSize ?? 1;
      // an epoch: ceil(examples per rank / batch) micro-batches, a step every gradientAccumulationSteps of them and one
      // for the remainder at the epoch's end
      const stepsPerEpoch = async () => {
        const perRank = Math.floor((await (o.kto ? countUnpairedExamples : countExamples)(o.data)) / W);
        return Math.ceil(Math.ceil(perRank / o.perDeviceTrainBatchSize) / o.gradientAccumulationSteps);
      };
      const totalSteps = o.maxSteps > 0 ? o.maxSteps : Math.max(1, Math.ceil(o.numTrainEpochs * (await stepsPerEpoch())));
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
  private async referenceLogps(b: PairBatch | KTOBatch): Promise<Float64Array | null> {
    const o = this.options;
    if (o.referenceFree) return null;
    const B = b.size;
    const keys = 'keys' in b ? b.keys : b.examples.map((e) => sequenceKey(e.prompt_ids, e.chosen_ids)).concat(b.examples.map((e) => sequenceKey(e.prompt_ids, e.rejected_ids)));
    const out = new Float64Array(2 * B);
    if (this.cache && keys.every((k) => this.cache!.has(k))) {
      keys.forEach((k, i) => (out[i] = this.cache!.get(k)!.logp));
      return out;
    }
    if (!this.reference && !o.lora) {
      const missing = keys.findIndex((k) => !this.cache?.has(k));
      const ex = b.examples[missing % B];
      throw new Error(`${ex.source ?? o.data}: example #${ex.index + 1} of epoch ${this.state.epoch + 1} is missing from the reference cache ${o.refCache} and no reference model was given`);
    }
    // the reference model, or (LoRA without one) the policy with its adapters off, switched inside the native call only
    const r = this.reference
      ? await this.reference.sequenceLogps(b.inputIds, b.attentionMask, b.labels, 2 * B, b.T, o.chunkRows, o.paddingFree)
      : await this.policy.baseSequenceLogps(b.inputIds, b.attentionMask, b.labels, 2 * B, b.T, o.chunkRows, o.paddingFree);
    if (this.cache) await this.cache.putMany(keys.map((k, i) => [k, { logp: r.logps[i], count: r.counts[i] }]));
    return r.logps;
  }

  /** This rank's batches of an epoch: preference pairs, or KTO batches (unpaired examples + mismatched pairs). */
  private batches(src: ResolvedDPOOptions, epoch: number, skip: number, shard?: Shard): AsyncGenerator<PairBatch | KTOBatch> {
    const tok = this.policy.requireTokenizer();
    return src.kto ? ktoBatches(src, tok, epoch, skip, undefined, shard) : pairBatches(src, tok, epoch, skip, undefined, shard);
  }

  private newWindow(): Window {
    return this.options.kto ? new KTOMetricWindow() : new PairMetricWindow(this.options.lossType.includes('orpo'));
  }

  /** Reference log-probs, then the policy forward (and backward of loss·scale when training), recorded in `w`. */
  private async microStep(b: PairBatch | KTOBatch, scale: number, train: boolean, w: Window, sync = false): Promise<void> {
    const ref = await this.referenceLogps(b);
    const n = this.native;
    const what = train ? 'train step' : 'evaluation';
    if ('desirable' in b) {
      const r = await callNative(what, () =>
        train ? n.accumulateKto(b.inputIds, b.attentionMask, b.labels, ref, b.desirable, 2 * b.size, b.T, scale, sync) : n.evaluateKto(b.inputIds, b.attentionMask, b.labels, ref, b.desirable, 2 * b.size, b.T),
      );
      (w as KTOMetricWindow).addKto(r, b.desirable);
    } else {
      const margins = this.rewardMargins(b);
      const r = await callNative(what, () =>
        train ? n.accumulate(b.inputIds, b.attentionMask, b.labels, ref, 2 * b.size, b.T, scale, sync, margins) : n.evaluate(b.inputIds, b.attentionMask, b.labels, ref, 2 * b.size, b.T, margins),
      );
      (w as PairMetricWindow).addMicro(r);
    }
  }

  /** A reward model's per-pair margins: the records' "margin" fields, the trainer's margin where a record has none;
   *  null when no record of the batch has one (the native loss then uses the trainer's margin). */
  private rewardMargins(b: PairBatch): Float64Array | null {
    const r = this.options.reward;
    if (!r || !b.margins) return null;
    return b.margins.map((m) => (Number.isNaN(m) ? r.margin : m));
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
    let window = this.newWindow();
    let windowStart = Date.now();
    const accum = o.gradientAccumulationSteps;
    const epochs = o.maxSteps > 0 ? Infinity : Math.ceil(o.numTrainEpochs);
    let micro = 0;
    let lastLogged = st.step;
    let stopped = false;
    while (st.step < st.totalSteps && st.epoch < epochs && !stopped) {
      let sawData = false;
      const shard = this.dist ? { rank: this.dist.rank, worldSize: this.dist.worldSize } : undefined;
      // a resume onto another world size starts at the next complete group of ranks (see orderedExamples)
      st.examplesInEpoch = Math.ceil(st.examplesInEpoch / (shard?.worldSize ?? 1)) * (shard?.worldSize ?? 1);
      for await (const [b, lastOfEpoch] of withLast(this.batches(o, st.epoch, st.examplesInEpoch, shard))) {
        sawData = true;
        if (await this.anyRank(opts.signal?.aborted === true)) {
          stopped = true;
          break;
        }
        const stepNext = (micro + 1) % accum === 0 || lastOfEpoch; // the optimizer steps after this micro-batch
        await this.microStep(b, 1 / accum, true, window, stepNext);
        st.examplesInEpoch += b.size * (this.dist?.worldSize ?? 1); // every rank took a batch of this size
        micro++;
        if (!stepNext) continue; // the epoch's last micro-batches make a step of their own
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
          window = this.newWindow();
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
    await this.saveCheckpoint({ merged: o.saveMerged });
  }

  /** Loss and reward metrics over evalData (no gradients), with TRL's eval_ prefix; appended to metrics.jsonl. */
  async evaluate(): Promise<Record<string, number>> {
    const o = this.options;
    if (!o.evalData) throw new Error('evaluate() needs the evalData option');
    const w = this.newWindow();
    for await (const b of this.batches({ ...o, data: o.evalData, shuffle: false }, 0, 0)) await this.microStep(b, 1, false, w);
    if (w.empty) throw new Error(`${o.evalData}: no usable examples`);
    const m: Record<string, number> = { step: this.state.step };
    for (const [k, v] of Object.entries(o.reward ? rewardSummary(w.summary()) : w.summary())) if (k !== 'grad_norm') m[`eval_${k}`] = v;
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
  private async globalWindow(w: Window): Promise<Window> {
    if (!this.dist) return w;
    return w.withSums(await callNative('all-reduce of metrics', () => this.native.allreduceSum(w.sums())));
  }

  private metrics(w: Window, lr: number, since: number): DPOMetrics {
    const st = this.state;
    const secs = Math.max(1e-3, (Date.now() - since) / 1000);
    return {
      step: st.step,
      epoch: st.epoch + st.examplesInEpoch / Math.max(1, (st.totalSteps * this.options.perDeviceTrainBatchSize * this.options.gradientAccumulationSteps) / Math.max(1, this.options.numTrainEpochs)),
      ...(this.options.reward ? rewardSummary(w.summary()) : w.summary()),
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
  async saveCheckpoint(opts: { merged?: boolean } = {}): Promise<string> {
    const o = this.options;
    const final = path.join(o.outputDir, `checkpoint-${this.state.step}`);
    if (!this.isMain) {
      await callNative('waiting for rank 0 to write a checkpoint', () => this.native.barrier());
      return final;
    }
    try {
      await this.writeCheckpoint(final, opts.merged === true);
    } finally {
      if (this.dist) await callNative('checkpoint barrier', () => this.native.barrier());
    }
    return final;
  }

  private async writeCheckpoint(final: string, merged = false): Promise<void> {
    const o = this.options;
    const tmp = path.join(o.outputDir, `.tmp-checkpoint-${this.state.step}-${process.pid}`);
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    if (o.lora) {
      await this.policy.saveAdapter(tmp); // PEFT layout; the base weights are those of o.policy
      if (merged) await writeMergedModel(o.policy, tmp, path.join(tmp, 'merged'));
    } else {
      await this.policy.save(tmp);
    }
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
    optimizer: { type: o.optimizer, weightDecay: o.weightDecay, beta1: o.adamBeta1, beta2: o.adamBeta2, eps: o.adamEpsilon, momentum: 0, fused: o.fusedAdamw },
    chunkRows: o.chunkRows,
    ...(o.kto ? { kto: { beta: o.beta, desirableWeight: o.kto.desirableWeight, undesirableWeight: o.kto.undesirableWeight, referenceFree: o.referenceFree } } : {}),
    paddingFree: o.paddingFree,
    activationCheckpointing: o.activationCheckpointing,
    ...(o.reward ? { reward: { centerRewardsCoefficient: o.reward.centerRewardsCoefficient, margin: o.reward.margin } } : {}),
  };
}

/** A reward model's window under TRL RewardTrainer's names: loss, accuracy, margin, rewards/chosen, rewards/rejected. */
function rewardSummary(s: Record<string, number>): Record<string, number> {
  const { 'rewards/accuracies': accuracy, 'rewards/margins': margin, 'logps/chosen': _lc, 'logps/rejected': _lr, 'logits/chosen': _gc, 'logits/rejected': _gr, ...rest } = s;
  return { ...rest, accuracy, margin };
}

/** base + adapter (PEFT folders) -> merged Hugging Face model in `out`, computed on the CPU in float32. */
export async function writeMergedModel(base: string, adapter: string, out: string): Promise<void> {
  await using m = await Model.load(base);
  await m.loadAdapter(adapter);
  await m.mergeAdapters();
  await m.save(out);
}

/** Each item of `src` with whether it is the last one (one item of look-ahead). */
async function* withLast<T>(src: AsyncIterable<T>): AsyncGenerator<[T, boolean]> {
  const it = src[Symbol.asyncIterator]();
  let cur = await it.next();
  while (!cur.done) {
    const next = await it.next();
    yield [cur.value, next.done === true];
    cur = next;
  }
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
