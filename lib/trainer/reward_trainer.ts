// RewardTrainer: Bradley–Terry reward models (TRL's RewardTrainer) as a thin option builder over DPOTrainer's loop
// (optimizer, accumulation, clipping, data parallel, checkpoints, metrics.jsonl). The policy is loaded with a scalar
// score head (HF …ForSequenceClassification; a causal checkpoint gets a new head drawn with `seed`) and trained on
// −log σ(r(x, y_w) − r(x, y_l)) (+ centerRewardsCoefficient·mean((r_w + r_l)²)), the reward read at each
// sequence's last token. No reference model. Checkpoints are …ForSequenceClassification directories.
import { checkNumber, ValidationError } from '../validate';
import { DPOTrainer } from './dpo_trainer';
import { DPOTrainerOptions } from './options';
import { ReferenceFreeBaseOptions } from './preference_trainers';

export interface RewardTrainerOptions extends ReferenceFreeBaseOptions {
  /** TRL RewardConfig.center_rewards_coefficient (≥ 0): adds c·mean((r_w + r_l)²), which keeps rewards centred on
   *  zero; default none (0). */
  centerRewardsCoefficient?: number | null;
  /** m in −log σ(r_w − r_l − m), the same for every pair (a finite number; the reward gap the model must exceed);
   *  default 0. A record's own numeric "margin" field takes precedence for that pair. */
  margin?: number;
}

/** One logging step's metrics, with TRL RewardTrainer's names. */
export interface RewardMetrics {
  step: number;
  epoch: number;
  loss: number;
  /** fraction of pairs with r_w > r_l */
  accuracy: number;
  /** mean r_w − r_l */
  margin: number;
  'rewards/chosen': number;
  'rewards/rejected': number;
  grad_norm: number;
  learning_rate: number;
  tokens_per_second: number;
  skipped_steps: number;
  [key: string]: number;
}

const NOT_USED = ['reference', 'refCache', 'referenceFree', 'lossType', 'lossWeights', 'beta', 'labelSmoothing', 'simpoGamma', 'reward'];

/** The DPOTrainerOptions of a reward-model run. */
export function rewardOptions(input: RewardTrainerOptions): DPOTrainerOptions {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new ValidationError(`Expected an object for RewardTrainer options but received ${JSON.stringify(input)}`);
  }
  const { centerRewardsCoefficient, margin, ...base } = input as RewardTrainerOptions & Record<string, unknown>;
  for (const k of Object.keys(base)) {
    if (NOT_USED.includes(k) && base[k] !== undefined) {
      throw new ValidationError(`Option '${k}' is not used by RewardTrainer (it trains a score head with the Bradley–Terry loss and has no reference model)`);
    }
  }
  const c = centerRewardsCoefficient ?? 0;
  checkNumber(c, 'centerRewardsCoefficient', { min: 0 });
  const m = checkNumber(margin ?? 0, 'margin');
  // The DPO loss fields below are required by the shared option checks but unused: the native trainer computes the
  // reward loss when `reward` is set.
  return { ...(base as unknown as DPOTrainerOptions), referenceFree: true, lossType: 'sigmoid', reward: { centerRewardsCoefficient: c, margin: m } };
}

/** Bradley–Terry reward-model training (TRL RewardTrainer). train() yields RewardMetrics. */
export class RewardTrainer {
  static async create(opts: RewardTrainerOptions): Promise<DPOTrainer> {
    return DPOTrainer.create(rewardOptions(opts));
  }
}
