// Reference-free relatives of DPO as thin option builders over DPOTrainer (same loop, checkpoints and metrics):
// ORPO (odds-ratio term + NLL), CPO (a reference-free preference loss + cpoAlpha·NLL, incl. SimPO) and plain SFT on
// the chosen completions. Names and defaults follow TRL's ORPOConfig / CPOConfig / SFT where they exist.
import { checkKnownKeys, checkNumber, checkObject, checkOneOf, ValidationError } from '../validate';
import { DPOTrainer } from './dpo_trainer';
import { DPO_DEFAULTS, DPOLossType, DPOTrainerOptions } from './options';

/** DPOTrainer options that these trainers set themselves (a reference model is never used). */
type Fixed = 'reference' | 'refCache' | 'referenceFree' | 'lossType' | 'lossWeights';

/** Options shared by every reference-free trainer: DPOTrainer's, less the reference and the loss. */
export type ReferenceFreeBaseOptions = Omit<DPOTrainerOptions, Fixed | 'beta' | 'labelSmoothing' | 'simpoGamma'>;

export interface ORPOTrainerOptions extends ReferenceFreeBaseOptions {
  /** λ (> 0), the weight of the odds-ratio term −λ log σ(log odds(y_w) − log odds(y_l)) added to the NLL of the
   *  chosen completion (TRL ORPOConfig.beta); default 0.1. */
  orpoAlpha?: number;
}

export const CPO_LOSS_TYPES = ['sigmoid', 'hinge', 'ipo', 'simpo'] as const;
export type CPOLossType = (typeof CPO_LOSS_TYPES)[number];

export interface CPOTrainerOptions extends ReferenceFreeBaseOptions {
  /** 'sigmoid' (CPO, default), 'hinge', 'ipo' (length-averaged) or 'simpo' (length-averaged, margin simpoGamma). */
  lossType?: CPOLossType;
  /** β (> 0) of the preference loss; default 0.1. */
  beta?: number;
  /** ε of the smoothed sigmoid / simpo loss, in [0, 0.5); default 0. */
  labelSmoothing?: number;
  /** γ ≥ 0, SimPO's target reward margin (lossType 'simpo' only); default 0.5. */
  simpoGamma?: number;
  /** Weight (≥ 0) of the chosen completion's NLL added to the preference loss (TRL CPOConfig.cpo_alpha); default 1. */
  cpoAlpha?: number;
}

export type SFTTrainerOptions = ReferenceFreeBaseOptions;

export const ORPO_DEFAULTS = { orpoAlpha: 0.1 };
export const CPO_DEFAULTS = { lossType: 'sigmoid' as CPOLossType, beta: DPO_DEFAULTS.beta, labelSmoothing: 0, simpoGamma: 0.5, cpoAlpha: 1.0 };

// CPO loss type -> the native reference-free loss term (hinge and ipo are the DPO ones with log πref ≡ 0, which is
// TRL's CPO definition: ipo there uses length-averaged log-probs, as the native ipo term does).
const CPO_NATIVE: Record<CPOLossType, DPOLossType> = { sigmoid: 'cpo', hinge: 'hinge', ipo: 'ipo', simpo: 'simpo' };

const BASE_KEYS = Object.keys(DPO_DEFAULTS).filter((k) => !['beta', 'labelSmoothing', 'simpoGamma', 'referenceFree', 'lossWeights'].includes(k))
  .concat(['policy', 'data', 'evalData', 'outputDir']);

function split(input: unknown, owner: string, own: readonly string[]): { base: Record<string, unknown>; own: Record<string, unknown> } {
  const o = checkObject(input, `${owner} options`);
  const known = [...BASE_KEYS, ...own];
  for (const k of Object.keys(o)) {
    if (!known.includes(k) && ['reference', 'refCache', 'referenceFree', 'lossType', 'lossWeights', 'beta', 'labelSmoothing', 'simpoGamma'].includes(k)) {
      throw new ValidationError(`Option '${k}' is not used by ${owner} (it is reference-free and sets its own loss); accepted: ${known.join(', ')}`);
    }
  }
  checkKnownKeys(o, known, owner);
  const base: Record<string, unknown> = {};
  const mine: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (own.includes(k) ? mine : base)[k] = v;
  return { base, own: mine };
}

/** The DPOTrainerOptions of an ORPO run: terms {orpo: 1, sft: 1} with β = λ, reference-free. */
export function orpoOptions(input: ORPOTrainerOptions): DPOTrainerOptions {
  const { base, own } = split(input, 'ORPOTrainer', ['orpoAlpha']);
  const lambda = checkNumber(own.orpoAlpha ?? ORPO_DEFAULTS.orpoAlpha, 'orpoAlpha', { minExclusive: 0 });
  return { ...(base as unknown as DPOTrainerOptions), lossType: ['orpo', 'sft'], lossWeights: [1, 1], beta: lambda, referenceFree: true };
}

/** The DPOTrainerOptions of a CPO / SimPO run: the mapped preference term (+ cpoAlpha·sft when cpoAlpha > 0). */
export function cpoOptions(input: CPOTrainerOptions): DPOTrainerOptions {
  const { base, own } = split(input, 'CPOTrainer', ['lossType', 'beta', 'labelSmoothing', 'simpoGamma', 'cpoAlpha']);
  const o = { ...CPO_DEFAULTS, ...own };
  const type = checkOneOf(o.lossType, 'lossType', CPO_LOSS_TYPES);
  const beta = checkNumber(o.beta, 'beta', { minExclusive: 0 });
  const labelSmoothing = checkNumber(o.labelSmoothing, 'labelSmoothing', { min: 0, max: 0.5 });
  const simpoGamma = checkNumber(o.simpoGamma, 'simpoGamma', { min: 0 });
  const cpoAlpha = checkNumber(o.cpoAlpha, 'cpoAlpha', { min: 0 });
  const lossType: DPOLossType[] = cpoAlpha > 0 ? [CPO_NATIVE[type], 'sft'] : [CPO_NATIVE[type]];
  const lossWeights = cpoAlpha > 0 ? [1, cpoAlpha] : [1];
  return { ...(base as unknown as DPOTrainerOptions), lossType, lossWeights, beta, labelSmoothing, simpoGamma, referenceFree: true };
}

/** The DPOTrainerOptions of supervised fine-tuning on the chosen completions (NLL per token), reference-free. */
export function sftOptions(input: SFTTrainerOptions): DPOTrainerOptions {
  const { base } = split(input, 'SFTTrainer', []);
  return { ...(base as unknown as DPOTrainerOptions), lossType: ['sft'], lossWeights: [1], referenceFree: true };
}

/** ORPO (Hong et al. 2024): NLL of y_w − λ log σ(log odds(y_w) − log odds(y_l)), odds on length-averaged log-probs. */
export class ORPOTrainer {
  static async create(opts: ORPOTrainerOptions): Promise<DPOTrainer> {
    return DPOTrainer.create(orpoOptions(opts));
  }
}

/** CPO (Xu et al. 2024) and SimPO (Meng et al. 2024, lossType 'simpo'): a reference-free preference loss + α·NLL. */
export class CPOTrainer {
  static async create(opts: CPOTrainerOptions): Promise<DPOTrainer> {
    return DPOTrainer.create(cpoOptions(opts));
  }
}

/** Supervised fine-tuning on the chosen completions of a preference data file. */
export class SFTTrainer {
  static async create(opts: SFTTrainerOptions): Promise<DPOTrainer> {
    return DPOTrainer.create(sftOptions(opts));
  }
}
