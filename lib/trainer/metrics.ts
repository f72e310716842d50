// Running sums of micro-step results over a logging window, reported with TRL's metric names: PairMetricWindow for
// the pair trainers (DPO family, ORPO's extra metrics), KTOMetricWindow for KTO. Each turns into a flat vector of sums
// for an all-reduce over the ranks (metrics over the global batch) and back.
import type { NativeKtoMicroStep, NativeMicroStep } from '../native';

export type Window = PairMetricWindow | KTOMetricWindow;

const PAIR_KEYS = ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins', 'logps/chosen', 'logps/rejected', 'lc', 'lr_', 'cc', 'rc', 'tokens', 'steps', 'grad_norm', 'log_odds_ratio', 'log_odds_chosen', 'nll_num'] as const;

/** log(p / (1 − p)) for p = exp(avg), avg < 0 a length-averaged log-prob (computed stably as avg − log(1 − e^avg)). */
function logOdds(avg: number): number {
  return avg - Math.log(-Math.expm1(avg));
}

/** log σ(x), stable for large |x|. */
function logSigmoid(x: number): number {
  return x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x));
}

export class PairMetricWindow {
  private n = 0;
  private pairs = 0;
  private s: Record<string, number> = {};
  /** orpo: also report TRL ORPOTrainer's log_odds_ratio, log_odds_chosen and nll_loss. */
  constructor(private readonly orpo = false) {}
  private add(k: string, v: number) {
    this.s[k] = (this.s[k] ?? 0) + v;
  }
  addMicro(r: NativeMicroStep): void {
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
      if (this.orpo) {
        // ORPO on length-averaged log-probs: log odds(y_w) − log odds(y_l), and the chosen NLL per token
        const lo = logOdds(r.policyLogps[i] / Math.max(1, r.counts[i])) - logOdds(r.policyLogps[P + i] / Math.max(1, r.counts[P + i]));
        this.add('log_odds_chosen', lo);
        this.add('log_odds_ratio', logSigmoid(lo));
        this.add('nll_num', -r.policyLogps[i]);
      }
    }
    this.add('tokens', r.tokens);
  }
  addStep(gradNorm: number): void {
    this.add('steps', 1);
    this.add('grad_norm', gradNorm);
  }
  get empty(): boolean {
    return this.n === 0;
  }
  get tokens(): number {
    return this.s.tokens ?? 0;
  }
  /** The window's sums (count, pairs, then PAIR_KEYS), for an all-reduce over the ranks. */
  sums(): Float64Array {
    return Float64Array.from([this.n, this.pairs, ...PAIR_KEYS.map((k) => this.s[k] ?? 0)]);
  }
  /** A window holding the given sums (from sums(), e.g. summed over the ranks). */
  withSums(v: Float64Array): PairMetricWindow {
    const w = new PairMetricWindow(this.orpo);
    w.n = v[0];
    w.pairs = v[1];
    PAIR_KEYS.forEach((k, i) => (w.s[k] = v[2 + i]));
    return w;
  }
  summary(): Record<string, number> {
    const p = Math.max(1, this.pairs);
    const s = (k: string) => this.s[k] ?? 0;
    return {
      loss: s('loss') / Math.max(1, this.n),
      'rewards/chosen': s('rewards/chosen') / p,
      'rewards/rejected': s('rewards/rejected') / p,
      'rewards/accuracies': s('rewards/accuracies') / p,
      'rewards/margins': s('rewards/margins') / p,
      'logps/chosen': s('logps/chosen') / p,
      'logps/rejected': s('logps/rejected') / p,
      'logits/chosen': s('lc') / Math.max(1, s('cc')),
      'logits/rejected': s('lr_') / Math.max(1, s('rc')),
      ...(this.orpo ? { log_odds_ratio: s('log_odds_ratio') / p, log_odds_chosen: s('log_odds_chosen') / p, nll_loss: s('nll_num') / Math.max(1, s('cc')) } : {}),
      grad_norm: s('grad_norm') / Math.max(1, s('steps')),
    };
  }
}

const KTO_KEYS = ['loss', 'kl', 'n_d', 'n_u', 'rewards_d', 'rewards_u', 'logps_d', 'logps_u', 'logits_d', 'logits_u', 'tokens_d', 'tokens_u', 'tokens', 'steps', 'grad_norm'] as const;
type KTOKey = (typeof KTO_KEYS)[number];

export class KTOMetricWindow {
  private n = 0;
  private s = Object.fromEntries(KTO_KEYS.map((k) => [k, 0])) as Record<KTOKey, number>;

  addKto(r: NativeKtoMicroStep, desirable: Int32Array): void {
    this.n++;
    this.s.loss += r.loss;
    this.s.kl += r.kl;
    for (let i = 0; i < desirable.length; i++) {
      const d = desirable[i] ? 'd' : 'u';
      this.s[`n_${d}`] += 1;
      this.s[`rewards_${d}`] += r.rewards[i];
      this.s[`logps_${d}`] += r.policyLogps[i];
      this.s[`logits_${d}`] += r.logitsSum[i];
      this.s[`tokens_${d}`] += r.counts[i];
    }
    this.s.tokens += r.tokens;
  }
  addStep(gradNorm: number): void {
    this.s.steps += 1;
    this.s.grad_norm += gradNorm;
  }
  get empty(): boolean {
    return this.n === 0;
  }
  get tokens(): number {
    return this.s.tokens;
  }
  /** The window's sums (micro-step count, then KTO_KEYS), for an all-reduce over the ranks. */
  sums(): Float64Array {
    return Float64Array.from([this.n, ...KTO_KEYS.map((k) => this.s[k])]);
  }
  /** A window holding the given sums (from sums(), e.g. summed over the ranks). */
  withSums(v: Float64Array): KTOMetricWindow {
    const w = new KTOMetricWindow();
    w.n = v[0];
    KTO_KEYS.forEach((k, i) => (w.s[k] = v[1 + i]));
    return w;
  }
  /** Means: loss and kl per micro-step; rewards / logps per example of each kind; logits per scored token. */
  summary(): Record<string, number> {
    const s = this.s;
    const per = (x: number, n: number) => (n > 0 ? x / n : 0);
    const chosen = per(s.rewards_d, s.n_d), rejected = per(s.rewards_u, s.n_u);
    return {
      loss: per(s.loss, this.n),
      kl: per(s.kl, this.n),
      'rewards/chosen': chosen,
      'rewards/rejected': rejected,
      'rewards/margins': chosen - rejected,
      'logps/chosen': per(s.logps_d, s.n_d),
      'logps/rejected': per(s.logps_u, s.n_u),
      'logits/chosen': per(s.logits_d, s.tokens_d),
      'logits/rejected': per(s.logits_u, s.tokens_u),
      'count/chosen': s.n_d,
      'count/rejected': s.n_u,
      grad_norm: per(s.grad_norm, s.steps),
    };
  }
}
