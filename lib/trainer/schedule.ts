// Learning-rate schedules (TRL/transformers semantics): linear warmup over warmupSteps, then linear decay to 0,
// cosine decay to 0, or constant.
import { checkInt, checkNumber, checkOneOf } from '../validate';

export type LrSchedulerType = 'linear' | 'cosine' | 'constant';
export const LR_SCHEDULERS: readonly LrSchedulerType[] = ['linear', 'cosine', 'constant'];

/** The learning rate for optimizer step `step` (0-based) of `totalSteps`. */
export function learningRateAt(step: number, totalSteps: number, baseLr: number, type: LrSchedulerType, warmupSteps: number): number {
  checkInt(step, 'step', 0);
  checkInt(totalSteps, 'totalSteps', 1);
  checkNumber(baseLr, 'learningRate', { min: 0 });
  checkOneOf(type, 'lrSchedulerType', LR_SCHEDULERS);
  checkInt(warmupSteps, 'warmupSteps', 0);
  if (step < warmupSteps) return (baseLr * step) / Math.max(1, warmupSteps);
  if (type === 'constant') return baseLr;
  const progress = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
  if (type === 'linear') return baseLr * Math.max(0, 1 - progress);
  return baseLr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress))));
}
