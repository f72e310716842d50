// The demo's synthetic preference task with a known ground-truth reward, in the spirit of the DPO paper's
// controlled sentiment generation: prompts ask for a review of something; the reward of a completion is its
// sentiment, (#positive words − #negative words) / #words, in [−1, 1], computed exactly.
import { mulberry32 } from '../data/shuffle';

export const SPECIAL_TOKENS = ['<pad>', '<bos>', '<eos>', '<unk>'] as const;
export const TOPICS = ['movie', 'film', 'show', 'book', 'play', 'album', 'concert', 'restaurant', 'hotel', 'game'];
export const POSITIVE = ['great', 'good', 'wonderful', 'lovely', 'brilliant', 'superb', 'fun', 'excellent'];
export const NEGATIVE = ['bad', 'awful', 'boring', 'terrible', 'dull', 'poor', 'weak', 'horrible'];
export const NEUTRAL = ['the', 'it', 'was', 'and', 'a', 'very', 'plot', 'story', 'acting', 'music', 'i', 'really', 'this', 'is', 'so', 'but', 'felt'];
export const PROMPT_WORDS = ['review', 'of', ':'];

/** The whole word vocabulary in id order (ids are the positions). */
export function vocabulary(): string[] {
  return [...SPECIAL_TOKENS, ...PROMPT_WORDS, ...TOPICS, ...POSITIVE, ...NEGATIVE, ...NEUTRAL];
}

const POS = new Set(POSITIVE);
const NEG = new Set(NEGATIVE);

/** Ground-truth reward of a completion text: (#positive − #negative) / #words (0 for an empty completion). */
export function sentimentReward(text: string): number {
  const words = text.split(/\s+/).filter((w) => w.length > 0 && !SPECIAL_TOKENS.includes(w as (typeof SPECIAL_TOKENS)[number]));
  if (words.length === 0) return 0;
  let s = 0;
  for (const w of words) s += POS.has(w) ? 1 : NEG.has(w) ? -1 : 0;
  return s / words.length;
}

export function promptText(topic: string): string {
  return `review of the ${topic} :`;
}

/** A review of 2–3 clauses like "the acting was great and the music was awful", each sentiment word positive
 *  with probability `pPositive`. */
export function sampleReview(rand: () => number, pPositive = 0.5): string {
  const pick = <T>(a: readonly T[]) => a[Math.floor(rand() * a.length)];
  const subjects = ['the plot', 'the story', 'the acting', 'the music', 'it', 'this'];
  const clauses = 2 + Math.floor(rand() * 2);
  const parts: string[] = [];
  for (let i = 0; i < clauses; i++) {
    const adj = rand() < pPositive ? pick(POSITIVE) : pick(NEGATIVE);
    const verb = pick(['was', 'is', 'felt']);
    const adv = rand() < 0.3 ? pick(['very ', 'really ', 'so ']) : '';
    parts.push(`${pick(subjects)} ${verb} ${adv}${adj}`);
  }
  return parts.join(rand() < 0.5 ? ' and ' : ' but ');
}

/** SFT data: {prompt, chosen, rejected} records whose chosen is a mixed-sentiment review (rejected: another review,
 *  unused by the SFT loss). */
export function sftRecords(n: number, seed: number): Array<{ prompt: string; chosen: string; rejected: string }> {
  const rand = mulberry32(seed);
  const out = [];
  for (let i = 0; i < n; i++) {
    const topic = TOPICS[Math.floor(rand() * TOPICS.length)];
    out.push({ prompt: promptText(topic), chosen: sampleReview(rand), rejected: sampleReview(rand) });
  }
  return out;
}
