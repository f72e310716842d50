// KTOTrainer: Kahneman–Tversky optimisation (Ethayarajh et al. 2024) from unpaired examples, as a thin option layer
// over DPOTrainer (same loop, reference model or cache, checkpoints, data parallelism). Names and defaults follow
// TRL's KTOConfig.
import { checkKnownKeys, checkNumber, checkObject, ValidationError } from '../validate';
import { DPOTrainer } from './dpo_trainer';
import { DPO_DEFAULTS, DPOTrainerOptions } from './options';

/** DPOTrainer options that KTO does not use (it has its own loss). */
type NotForKTO = 'lossType' | 'lossWeights' | 'labelSmoothing' | 'simpoGamma' | 'reward' | 'kto';

export interface KTOTrainerOptions extends Omit<DPOTrainerOptions, NotForKTO> {
  /** `data`: unpaired records {"prompt", "completion", "label": bool} (or prompt_ids / completion_ids); preference
   *  records are split into a desirable (chosen) and an undesirable (rejected) example. */
  data: string;
  /** β (> 0) of the KTO value function; default 0.1. */
  beta?: number;
  /** w_d (> 0), the weight of desirable examples (TRL desirable_weight); default 1. */
  desirableWeight?: number;
  /** w_u (> 0), the weight of undesirable examples (TRL undesirable_weight); default 1. */
  undesirableWeight?: number;
}

export const KTO_DEFAULTS = { beta: DPO_DEFAULTS.beta, desirableWeight: 1.0, undesirableWeight: 1.0 };

const NOT_FOR_KTO = ['lossType', 'lossWeights', 'labelSmoothing', 'simpoGamma', 'reward', 'kto'];

/** The DPOTrainerOptions of a KTO run. */
export function ktoOptions(input: KTOTrainerOptions): DPOTrainerOptions {
  const o = checkObject(input, 'KTOTrainer options') as Record<string, unknown>;
  for (const k of NOT_FOR_KTO) {
    if (o[k] !== undefined) throw new ValidationError(`Option '${k}' is not used by KTOTrainer (it sets its own loss: beta, desirableWeight, undesirableWeight)`);
  }
  const known = [...Object.keys(DPO_DEFAULTS).filter((k) => !NOT_FOR_KTO.includes(k)), 'policy', 'reference', 'refCache', 'data', 'evalData', 'outputDir', 'desirableWeight', 'undesirableWeight'];
  checkKnownKeys(o, known, 'KTOTrainer');
  const { desirableWeight, undesirableWeight, ...base } = { ...o } as Record<string, unknown>;
  const kto = {
    desirableWeight: checkNumber(desirableWeight ?? KTO_DEFAULTS.desirableWeight, 'desirableWeight', { minExclusive: 0 }),
    undesirableWeight: checkNumber(undesirableWeight ?? KTO_DEFAULTS.undesirableWeight, 'undesirableWeight', { minExclusive: 0 }),
  };
  return { ...(base as unknown as DPOTrainerOptions), kto };
}

/** KTO: loss w_d(1 − σ(β(Δ − z0))) on desirable and w_u(1 − σ(β(z0 − Δ))) on undesirable completions, z0 the
 *  detached KL estimate from mismatched prompt/completion pairs of the batch. Needs a reference (model, cache or
 *  LoRA's adapters-off policy) like DPO. */
export class KTOTrainer {
  static async create(opts: KTOTrainerOptions): Promise<DPOTrainer> {
    return DPOTrainer.create(ktoOptions(opts));
  }
}
