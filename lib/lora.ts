// LoRA options (names follow PEFT's LoraConfig) and their validation; the adapters live in the native model
// (native/core/lora.h) and are reached through Model.addLora / loadAdapter / saveAdapter / mergeAdapters.
import { checkArray, checkInt, checkKnownKeys, checkNumber, checkObject, checkString, fail } from './validate';

export interface LoraOptions {
  /** Rank of the update B·A (PEFT `r`); default 8. */
  r?: number;
  /** Scaling numerator: the update is (alpha / r)·B·A (PEFT `lora_alpha`); default 8. */
  alpha?: number;
  /** Dropout probability on the adapter input while training (PEFT `lora_dropout`), in [0, 1); default 0. */
  dropout?: number;
  /** Linear modules to adapt, by last name ('q_proj') or full module name (PEFT `target_modules`); default
   *  ['q_proj', 'v_proj'] for llama / mistral / qwen2 and ['c_attn'] for gpt2 (PEFT's defaults). */
  targetModules?: string[];
}

export type ResolvedLoraOptions = Required<LoraOptions>;

/** What the native model reports about its adapters. */
export interface AdapterInfo {
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[] | string;
  fanInFanOut: boolean;
  /** Adapted modules (HF names), forward order. */
  modules: string[];
  /** Elements of all A and B matrices. */
  trainableParameters: number;
}

export const LORA_DEFAULTS = { r: 8, alpha: 8, dropout: 0 };

/** PEFT's default target modules of a model type (undefined when there is none). */
export function defaultTargetModules(modelType: string): string[] | undefined {
  if (modelType === 'llama' || modelType === 'mistral' || modelType === 'qwen2') return ['q_proj', 'v_proj'];
  if (modelType === 'gpt2') return ['c_attn'];
  return undefined;
}

/** Checks the fields and fills the defaults except targetModules (left out when not given: it depends on the model). */
export function checkLoraOptions(input: unknown, field = 'lora'): LoraOptions {
  const raw = checkObject(input, field);
  // PEFT's LoraConfig names (e.g. from a YAML config file) are accepted for the same fields
  const PEFT: Record<string, string> = { lora_alpha: 'alpha', lora_dropout: 'dropout', target_modules: 'targetModules', loraAlpha: 'alpha', loraDropout: 'dropout' };
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    const key = PEFT[k] ?? k;
    if (key in o) fail(`one of ${key} and ${k}`, `${field}.${k}`, v);
    o[key] = v;
  }
  checkKnownKeys(o, ['r', 'alpha', 'dropout', 'targetModules'], field);
  const out: LoraOptions = {
    r: checkInt(o.r ?? LORA_DEFAULTS.r, `${field}.r`, 1, 1 << 16),
    alpha: checkNumber(o.alpha ?? LORA_DEFAULTS.alpha, `${field}.alpha`, { minExclusive: 0 }),
    dropout: checkNumber(o.dropout ?? LORA_DEFAULTS.dropout, `${field}.dropout`, { min: 0 }),
  };
  if (out.dropout! >= 1) fail('a number in [0, 1)', `${field}.dropout`, o.dropout);
  if (o.targetModules !== undefined) {
    const t = checkArray(o.targetModules, `${field}.targetModules`);
    if (t.length === 0) fail('at least one module name', `${field}.targetModules`, o.targetModules);
    out.targetModules = t.map((m, i) => checkString(m, `${field}.targetModules[${i}]`, { nonEmpty: true }));
  }
  return out;
}

/** Full options for a model type: checkLoraOptions plus the type's default target modules. */
export function resolveLoraOptions(input: unknown, modelType: string, field = 'lora'): ResolvedLoraOptions {
  const o = checkLoraOptions(input, field);
  const targetModules = o.targetModules ?? defaultTargetModules(modelType);
  if (!targetModules) fail(`a list of module names (model_type '${modelType}' has no default)`, `${field}.targetModules`, undefined);
  return { r: o.r!, alpha: o.alpha!, dropout: o.dropout!, targetModules };
}
