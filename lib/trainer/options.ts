// DPOTrainer options: names follow TRL's DPOConfig where one exists; every field says what it does and its default.
// TS owns the defaults and the validation; native code receives only checked values.
import {
  checkBool, checkDevice, checkDType, checkInt, checkKnownKeys, checkNumber, checkObject, checkOneOf, checkString,
  Device, DType, fail,
} from '../validate';
import { LR_SCHEDULERS, LrSchedulerType } from './schedule';
import { checkLoraOptions, LoraOptions } from '../lora';

export const DPO_LOSS_TYPES = [
  'sigmoid', 'robust', 'hinge', 'ipo', 'exo_pair', 'nca_pair', 'bco_pair', 'sppo_hard', 'apo_zero', 'apo_down',
  'discopop', 'aot', 'aot_unpaired', 'sigmoid_norm', 'sft', 'orpo', 'simpo', 'cpo',
] as const;
export type DPOLossType = (typeof DPO_LOSS_TYPES)[number];

export interface DPOTrainerOptions {
  /** Policy model directory (Hugging Face layout). Required. */
  policy: string;
  /** Reference model directory; default: none (then `refCache` must hold every example, or `referenceFree`). */
  reference?: string;
  /** Reference log-prob cache directory (content-keyed; made by `precompute` or filled during training); default none. */
  refCache?: string;
  /** Training data: a .jsonl or .parquet file of preference examples. Required. */
  data: string;
  /** Evaluation data file; default none. */
  evalData?: string;
  /** Where checkpoints, metrics.jsonl and the report go. Required. */
  outputDir: string;
  /** β, the strength of the KL penalty (DPO's temperature); default 0.1. */
  beta?: number;
  /** Loss type, or a list combined as a weighted sum with `lossWeights`; default 'sigmoid'. */
  lossType?: DPOLossType | DPOLossType[];
  /** Weights of the listed loss types; default all 1. */
  lossWeights?: number[];
  /** ε of conservative DPO (cDPO) / robust losses; default 0. */
  labelSmoothing?: number;
  /** Treat the reference as uniform (log πref = 0); default false. */
  referenceFree?: boolean;
  /** γ ≥ 0, SimPO's target reward margin in −log σ(β(ℓ̄_w − ℓ̄_l) − γ) (loss type 'simpo'; TRL CPOConfig.simpo_gamma);
   *  default 0.5. */
  simpoGamma?: number;
  /** Peak learning rate; default 1e-6 (TRL's DPO default). */
  learningRate?: number;
  /** Pairs per micro-batch; default 8. */
  perDeviceTrainBatchSize?: number;
  /** Micro-batches per optimizer step; default 1. */
  gradientAccumulationSteps?: number;
  /** Longest prompt + completion in tokens; default 1024. */
  maxLength?: number;
  /** Longest prompt in tokens; default 512. */
  maxPromptLength?: number;
  /** Which prompt tokens to keep when it is too long: 'keep_end' (default) or 'keep_start'. */
  truncationMode?: 'keep_end' | 'keep_start';
  /** Over-long examples: 'truncate' (default), 'drop' (counted) or 'error'. */
  overlongPolicy?: 'truncate' | 'drop' | 'error';
  /** Fraction of steps of linear warmup; default 0. */
  warmupRatio?: number;
  /** 'linear' (default), 'cosine' or 'constant'. */
  lrSchedulerType?: LrSchedulerType;
  /** Weight decay (decoupled for AdamW); default 0. */
  weightDecay?: number;
  /** Gradient clipping by total norm; 0 disables; default 1.0. */
  maxGradNorm?: number;
  /** Epochs over the data (used when maxSteps <= 0); default 1. */
  numTrainEpochs?: number;
  /** Optimizer steps to run; > 0 overrides numTrainEpochs; default -1. */
  maxSteps?: number;
  /** Seed of shuffling and sampling; default 42. */
  seed?: number;
  /** Shuffle examples with a seeded buffer; default true. */
  shuffle?: boolean;
  /** Shuffle buffer size in examples; default 10000. */
  shuffleBufferSize?: number;
  /** 'adamw' (default) or 'sgd'. */
  optimizer?: 'adamw' | 'sgd';
  /** AdamW β1; default 0.9. */
  adamBeta1?: number;
  /** AdamW β2; default 0.999. */
  adamBeta2?: number;
  /** AdamW ε; default 1e-8. */
  adamEpsilon?: number;
  /** AdamW through libtorch's fused multi-tensor kernel (Python's `fused=True`) where libtorch ≥ 2.4 has it; false: the per-tensor update; default true. */
  fusedAdamw?: boolean;
  /** Compute dtype; default 'float32'. */
  dtype?: DType;
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: Device;
  /** Log metrics every N optimizer steps; default 10. */
  loggingSteps?: number;
  /** Evaluate every N steps (0 = only at the end when evalData is given); default 0. */
  evalSteps?: number;
  /** Save a checkpoint every N steps (0 = only at the end); default 500. */
  saveSteps?: number;
  /** Resume from the latest checkpoint in outputDir (true) or from the given checkpoint directory; default false. */
  resume?: boolean | string;
  /** Skip at most this many non-finite steps before stopping with an error; default 3. */
  maxNonFiniteSteps?: number;
  /** Rows of the (tokens, hidden) matrix per lm-head chunk of the fused loss; default 1024. */
  chunkRows?: number;
  /** Train LoRA adapters instead of all weights (PEFT's LoraConfig: r, lora_alpha, lora_dropout, target_modules as
   *  r, alpha, dropout, targetModules); base weights stay frozen. Without `reference` / `refCache` the DPO reference
   *  is the policy with its adapters off (no second model in memory). Checkpoints hold the adapter in PEFT's layout
   *  (adapter_config.json + adapter_model.safetensors). Default: none (full fine-tuning). */
  lora?: LoraOptions;
  /** With `lora`: also write the merged model (base + (alpha/r)·B·A) to <final checkpoint>/merged; default false. */
  saveMerged?: boolean;
  /** Train a reward model instead (set by RewardTrainer): the policy is loaded with a score head and trained with the
   *  Bradley–Terry loss; the DPO loss options are then unused. Default: none. */
  reward?: RewardModelOptions;
  /** Train with KTO on unpaired examples instead (set by KTOTrainer, lib/trainer/kto_trainer.ts): the data is read as
   *  {prompt, completion, label} (pairs split into both) and the loss is KTO's with β = `beta`. Default: none. */
  kto?: KTOModeOptions;
  /** Pack each micro-batch's sequences into fewer rows (block-diagonal attention, no compute on padding) for the
   *  policy and reference forwards; same losses and gradients; default false. */
  paddingFree?: boolean;
  /** Data parallel (`torch-dpo launch`): all-reduce the gradient buckets while the last backward before each optimizer
   *  step runs (DDP's overlap) instead of all at once before the step; same result. Default true. */
  overlapGradSync?: boolean;
  /** Recompute each transformer block of the policy in the backward pass instead of keeping its activations:
   *  activation memory drops from all blocks' intermediates to one block's plus each block's input, for one more
   *  forward of the blocks (~1/3 more block compute). Same losses and gradients. Default false. */
  activationCheckpointing?: boolean;
  /** Data parallel: the c10d process-group backend. 'auto' takes NCCL when training on CUDA and the build has it
   *  (runtimeInfo().distBackends), else gloo (CUDA tensors then staged through host memory). Default 'auto'. */
  distBackend?: 'auto' | 'gloo' | 'nccl';
}

export type ResolvedDPOOptions = Required<Omit<DPOTrainerOptions, 'reference' | 'refCache' | 'evalData' | 'lossType' | 'reward' | 'lora' | 'kto'>> & {
  kto?: KTOModeOptions;
  lora?: LoraOptions;
  reward?: RewardModelOptions;
  reference?: string;
  refCache?: string;
  evalData?: string;
  lossType: DPOLossType[];
};

export const DPO_DEFAULTS = {
  beta: 0.1,
  lossWeights: [] as number[],
  labelSmoothing: 0,
  referenceFree: false,
  simpoGamma: 0.5,
  learningRate: 1e-6,
  perDeviceTrainBatchSize: 8,
  gradientAccumulationSteps: 1,
  maxLength: 1024,
  maxPromptLength: 512,
  truncationMode: 'keep_end' as const,
  overlongPolicy: 'truncate' as const,
  warmupRatio: 0,
  lrSchedulerType: 'linear' as LrSchedulerType,
  weightDecay: 0,
  maxGradNorm: 1.0,
  numTrainEpochs: 1,
  maxSteps: -1,
  seed: 42,
  shuffle: true,
  shuffleBufferSize: 10000,
  optimizer: 'adamw' as const,
  adamBeta1: 0.9,
  adamBeta2: 0.999,
  adamEpsilon: 1e-8,
  fusedAdamw: true,
  dtype: 'float32' as DType,
  device: 'cpu' as Device,
  loggingSteps: 10,
  evalSteps: 0,
  saveSteps: 500,
  resume: false as boolean | string,
  maxNonFiniteSteps: 3,
  chunkRows: 1024,
  lora: undefined as LoraOptions | undefined, // listed so that the trainers built on these defaults accept it
  saveMerged: false,
  paddingFree: false,
  overlapGradSync: true,
  activationCheckpointing: false,
  distBackend: 'auto' as 'auto' | 'gloo' | 'nccl',
};

const KNOWN = ['policy', 'reference', 'refCache', 'data', 'evalData', 'outputDir', 'lossType', 'reward', 'kto', ...Object.keys(DPO_DEFAULTS)];

/** Reward-model training (set by RewardTrainer, lib/trainer/reward_trainer.ts). */
export interface RewardModelOptions {
  /** TRL RewardConfig.center_rewards_coefficient: adds c·mean((r_w + r_l)²) to the loss; 0 = off. */
  centerRewardsCoefficient: number;
  /** m in −log σ(r_w − r_l − m) for every pair; 0 = plain Bradley–Terry. */
  margin: number;
}

/** KTO training (set by KTOTrainer). */
export interface KTOModeOptions {
  /** w_d > 0, the weight of desirable examples' losses (TRL KTOConfig.desirable_weight). */
  desirableWeight: number;
  /** w_u > 0, the weight of undesirable examples' losses (TRL KTOConfig.undesirable_weight). */
  undesirableWeight: number;
}

/** Fills defaults and checks every option; throws a ValidationError naming the option. */
export function resolveDPOOptions(input: DPOTrainerOptions): ResolvedDPOOptions {
  const o = checkObject(input, 'DPOTrainer options') as Record<string, unknown>;
  checkKnownKeys(o, KNOWN, 'DPOTrainer');
  const r = { ...DPO_DEFAULTS, ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) } as Record<string, any>;
  checkString(r.policy, 'policy', { nonEmpty: true });
  if (r.reference !== undefined) checkString(r.reference, 'reference', { nonEmpty: true });
  if (r.refCache !== undefined) checkString(r.refCache, 'refCache', { nonEmpty: true });
  checkString(r.data, 'data', { nonEmpty: true });
  if (r.evalData !== undefined) checkString(r.evalData, 'evalData', { nonEmpty: true });
  checkString(r.outputDir, 'outputDir', { nonEmpty: true });
  checkNumber(r.beta, 'beta', { minExclusive: 0 });
  const types = r.lossType === undefined ? ['sigmoid'] : Array.isArray(r.lossType) ? r.lossType : [r.lossType];
  if (types.length === 0) fail('at least one loss type', 'lossType', r.lossType);
  types.forEach((t: unknown, i: number) => checkOneOf(t, `lossType[${i}]`, DPO_LOSS_TYPES));
  r.lossType = types;
  if (!Array.isArray(r.lossWeights)) fail('an array of numbers', 'lossWeights', r.lossWeights);
  if (r.lossWeights.length === 0) r.lossWeights = types.map(() => 1);
  if (r.lossWeights.length !== types.length) fail(`${types.length} weight(s), one per loss type`, 'lossWeights', r.lossWeights);
  r.lossWeights.forEach((w: unknown, i: number) => checkNumber(w, `lossWeights[${i}]`));
  checkNumber(r.labelSmoothing, 'labelSmoothing', { min: 0, max: 0.5 });
  checkBool(r.referenceFree, 'referenceFree');
  checkNumber(r.simpoGamma, 'simpoGamma', { min: 0 });
  checkNumber(r.learningRate, 'learningRate', { min: 0 });
  checkInt(r.perDeviceTrainBatchSize, 'perDeviceTrainBatchSize', 1, 1 << 20);
  checkInt(r.gradientAccumulationSteps, 'gradientAccumulationSteps', 1, 1 << 20);
  checkInt(r.maxLength, 'maxLength', 2, 1 << 24);
  checkInt(r.maxPromptLength, 'maxPromptLength', 1, 1 << 24);
  if (r.maxPromptLength >= r.maxLength) fail(`an integer < maxLength (${r.maxLength})`, 'maxPromptLength', r.maxPromptLength);
  checkOneOf(r.truncationMode, 'truncationMode', ['keep_end', 'keep_start'] as const);
  checkOneOf(r.overlongPolicy, 'overlongPolicy', ['truncate', 'drop', 'error'] as const);
  checkNumber(r.warmupRatio, 'warmupRatio', { min: 0, max: 1 });
  checkOneOf(r.lrSchedulerType, 'lrSchedulerType', LR_SCHEDULERS);
  checkNumber(r.weightDecay, 'weightDecay', { min: 0 });
  checkNumber(r.maxGradNorm, 'maxGradNorm', { min: 0 });
  checkNumber(r.numTrainEpochs, 'numTrainEpochs', { minExclusive: 0 });
  checkInt(r.maxSteps, 'maxSteps', -1);
  checkInt(r.seed, 'seed', 0, 2 ** 31 - 1);
  checkBool(r.shuffle, 'shuffle');
  checkInt(r.shuffleBufferSize, 'shuffleBufferSize', 1, 1 << 26);
  checkOneOf(r.optimizer, 'optimizer', ['adamw', 'sgd'] as const);
  checkNumber(r.adamBeta1, 'adamBeta1', { min: 0, max: 0.999999 });
  checkNumber(r.adamBeta2, 'adamBeta2', { min: 0, max: 0.999999 });
  checkNumber(r.adamEpsilon, 'adamEpsilon', { minExclusive: 0 });
  checkBool(r.fusedAdamw, 'fusedAdamw');
  checkDType(r.dtype, 'dtype');
  checkDevice(r.device, 'device');
  if (r.device === 'cpu' && r.dtype !== 'float32') fail("'float32' on device 'cpu'", 'dtype', r.dtype);
  checkInt(r.loggingSteps, 'loggingSteps', 1);
  checkInt(r.evalSteps, 'evalSteps', 0);
  checkInt(r.saveSteps, 'saveSteps', 0);
  if (typeof r.resume !== 'boolean') checkString(r.resume, 'resume', { nonEmpty: true });
  checkInt(r.maxNonFiniteSteps, 'maxNonFiniteSteps', 0);
  checkInt(r.chunkRows, 'chunkRows', 1, 1 << 24);
  if (r.lora !== undefined) r.lora = checkLoraOptions(r.lora, 'lora');
  if (r.lora && r.reward) fail('no lora for a reward model (its score head would stay frozen: not supported yet)', 'lora', r.lora);
  checkBool(r.saveMerged, 'saveMerged');
  if (r.saveMerged && !r.lora) fail('false without lora (a full fine-tune saves full weights already)', 'saveMerged', r.saveMerged);
  if (r.reward !== undefined) {
    checkNumber(checkObject(r.reward, 'reward').centerRewardsCoefficient, 'centerRewardsCoefficient', { min: 0 });
    checkNumber(r.reward.margin, 'margin');
  }
  checkBool(r.paddingFree, 'paddingFree');
  checkBool(r.overlapGradSync, 'overlapGradSync');
  checkBool(r.activationCheckpointing, 'activationCheckpointing');
  checkOneOf(r.distBackend, 'distBackend', ['auto', 'gloo', 'nccl'] as const);
  if (r.kto !== undefined) {
    const k = checkObject(r.kto, 'kto');
    checkNumber(k.desirableWeight, 'desirableWeight', { minExclusive: 0 });
    checkNumber(k.undesirableWeight, 'undesirableWeight', { minExclusive: 0 });
  }
  if (!r.reference && !r.refCache && !r.referenceFree && !r.lora && !(types.length === 1 && types[0] === 'sft')) {
    fail('a reference model, a refCache, or referenceFree: true (or lora: the reference is then the policy with its adapters off)', 'reference', r.reference);
  }
  return r as ResolvedDPOOptions;
}
