// Preference-data formats, conventions, truncation and bad-input errors.
// Expected ids are worked out by hand from the fixture merges (see test/fixtures/tokenizers/generate.mjs and the
// derivations in tokenizer.test.ts): gpt2-tiny has hello 259, Ġworld 264, Ġthe 266, he 256, or 261, ld 263, é 267,
// EOS <|endoftext|> 269; llama3-tiny has Hi 256, Ġthere 261, ĊĊ 265, OK 266, user 264, BOS 267, headers 269/270,
// EOS <|eot_id|> 271.
import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '../../lib/tokenizer';
import {
  PreferenceExample, TokenizeOptions, TokenizedExample, newStats, readJsonl, readRecords, recordsFromArray, tokenizeExamples, tokenizeRecord,
} from '../../lib/data';

const ROOT = join(__dirname, '..', '..', '..');
const TOK = join(ROOT, 'test', 'fixtures', 'tokenizers');
const DATA = join(ROOT, 'test', 'fixtures', 'data');
const gpt2 = () => Tokenizer.fromDir(join(TOK, 'gpt2-tiny'));
const llama = () => Tokenizer.fromDir(join(TOK, 'llama3-tiny'));
const bytes = (s: string) => [...Buffer.from(s, 'utf8')];

async function all(path: string, tok: Tokenizer, opts: TokenizeOptions = {}): Promise<TokenizedExample[]> {
  const out: TokenizedExample[] = [];
  for await (const e of tokenizeExamples(readRecords(path), tok, opts)) out.push(e);
  return out;
}

function tmpFile(name: string, text: string | Buffer): string {
  const dir = mkdtempSync(join(tmpdir(), 'tdpo-data-'));
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

// llama3-tiny rendering of [{user: "Hi there"}] with the generation prompt, encoded without special tokens:
// BOS, <|start_header_id|>, user, <|end_header_id|>, "\n\n", Hi, Ġthere, <|eot_id|>, <|start_header_id|>,
// "assistant" (bytes), <|end_header_id|>, "\n\n".
const P_USER = [267, 269, 264, 270, 265, 256, 261, 271, 269, ...bytes('assistant'), 270, 265];
// with a system turn "Be brief." first: "system" bytes; "Be" B e; " brief" Ġ b r i e f (no merge applies); "."
const P_SYS_USER = [267, 269, ...bytes('system'), 270, 265, ...bytes('Be brief.'), 271, ...P_USER.slice(1)];

test('standard format: prompt with default special tokens, completions without, EOS appended', async (t) => {
  const tok = await gpt2();
  t.deepEqual(await all(join(DATA, 'standard.jsonl'), tok), [
    { prompt_ids: [259], chosen_ids: [264, 269], rejected_ids: [266, 269] },
    // "the café" = t he Ġ c a f é; " hello<|endoftext|>" already ends with EOS (not doubled);
    // "\tworld\n" = \t, w or ld, \n, then EOS
    { prompt_ids: [116, 256, 32, 99, 97, 102, 267], chosen_ids: [32, 259, 269], rejected_ids: [9, 119, 261, 263, 10, 269] },
  ]);
  // Llama-3: the standard prompt gets BOS from the post-processor; completions do not.
  const l = await llama();
  t.deepEqual(tokenizeRecord({ prompt: 'Hi', chosen: ' there', rejected: 'OK' }, l, 'mem:1'), {
    prompt_ids: [267, 256], chosen_ids: [261, 271], rejected_ids: [266, 271],
  });
});

test('conversational format: template with generation prompt; completion = conversation minus prompt text', async (t) => {
  const tok = await llama();
  t.deepEqual(await all(join(DATA, 'conversational.jsonl'), tok), [
    // completion text "OK<|eot_id|>" already ends with EOS 271
    { prompt_ids: P_USER, chosen_ids: [266, 271], rejected_ids: [256, 271] },
    { prompt_ids: P_SYS_USER, chosen_ids: [266, 271], rejected_ids: [256, 261, 271] },
  ]);
});

test('conversational with ChatML: the rendered completion ends in "\\n", so EOS is appended', async (t) => {
  const tok = await Tokenizer.fromDir(join(TOK, 'chatml-tiny'));
  const ex = tokenizeRecord(
    { prompt: [{ role: 'user', content: 'hello' }], chosen: [{ role: 'assistant', content: 'OK' }], rejected: [{ role: 'assistant', content: 'hello' }] },
    tok, 'mem:1',
  ) as PreferenceExample;
  // prompt "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
  t.deepEqual(ex.prompt_ids, [270, ...bytes('user'), 10, 259, 271, 10, 270, ...bytes('assistant'), 10]);
  // completion "OK<|im_end|>\n" + EOS (<|im_end|> = 271)
  t.deepEqual(ex.chosen_ids, [79, 75, 271, 10, 271]);
  t.deepEqual(ex.rejected_ids, [259, 271, 10, 271]);
});

test('implicit prompt: the longest common message prefix is the prompt', async (t) => {
  const tok = await llama();
  const implicit = await all(join(DATA, 'implicit.jsonl'), tok);
  t.deepEqual(implicit, await all(join(DATA, 'conversational.jsonl'), tok));
  t.deepEqual((implicit[1] as PreferenceExample).prompt_ids, P_SYS_USER);
});

test('pre-tokenized and unpaired (KTO) formats', async (t) => {
  const tok = await gpt2();
  t.deepEqual(await all(join(DATA, 'tokenized.jsonl'), tok), [
    { prompt_ids: [1, 2, 3, 4, 5, 6], chosen_ids: [10, 11, 12, 269], rejected_ids: [20, 21, 269] },
  ]);
  const l = await llama();
  t.deepEqual(await all(join(DATA, 'unpaired.jsonl'), l), [
    { prompt_ids: [267, 258, 108, 108, 111], completion_ids: [32, 119, 111, 114, 108, 100, 271], label: true },
    { prompt_ids: P_USER, completion_ids: [266, 271], label: false },
    { prompt_ids: [259], completion_ids: [264, 271], label: true },
  ]);
});

test('bad input names file, line and field', async (t) => {
  const tok = await gpt2();
  const data = join(DATA, 'data.jsonl');
  await t.throwsAsync(all(data, tok), { message: `${data}:17: Expected a non-empty string for chosen but received 42` });
  const malformed = join(DATA, 'malformed.jsonl');
  // line 2 is blank (skipped but counted)
  await t.throwsAsync(all(malformed, tok), { message: new RegExp(`^${malformed.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3: malformed JSON: `) });
  const badUtf8 = join(DATA, 'bad_utf8.jsonl');
  // line 2 is {"prompt": "caf<C3>", ... : the lone lead byte C3 sits at byte 15 of the line
  await t.throwsAsync(all(badUtf8, tok), { message: `${badUtf8}:2: invalid UTF-8 at byte 15 of the line` });

  const cases: [unknown, string][] = [
    [{ chosen: ' world', rejected: ' the' }, 'Expected a non-empty string for prompt but received undefined'],
    [{ prompt: '', chosen: ' world', rejected: ' the' }, 'Expected a non-empty string for prompt but received ""'],
    [{ prompt: 'x', chosen: ' world', rejected: null }, 'Expected a non-empty string for rejected but received null'],
    [{ prompt: 'x', chosen: [{ role: 'assistant', content: 'y' }], rejected: 'z' }, 'Expected a non-empty string for chosen but received an array of length 1'],
    [[1, 2], 'Expected an object for the record but received an array of length 2'],
    [{ prompt: 'x', chosen: 'same', rejected: 'same' }, 'Expected chosen and rejected to differ but received identical chosen and rejected'],
    [{ prompt_ids: [1, 300], chosen_ids: [2], rejected_ids: [3] }, 'Expected token ids in [0, 270) for prompt_ids[1] but received 300'],
    [{ prompt_ids: [1], chosen_ids: [], rejected_ids: [3] }, 'Expected a non-empty array of token ids for chosen_ids but received an array of length 0'],
    [{ prompt: 'x', completion: 'y', label: 'yes' }, 'Expected a boolean for label but received "yes"'],
  ];
  for (const [rec, msg] of cases) t.throws(() => tokenizeRecord(rec, tok, 'x.jsonl:5'), { message: `x.jsonl:5: ${msg}` }, JSON.stringify(rec));

  const l = await llama();
  const conv: [unknown, string][] = [
    [{ prompt: [{ role: 'robot', content: 'hi' }], chosen: [{ role: 'assistant', content: 'a' }], rejected: [{ role: 'assistant', content: 'b' }] },
      "Expected one of 'system', 'developer', 'user', 'assistant', 'tool' for prompt[0].role but received \"robot\""],
    [{ prompt: [{ role: 'user', content: 'hi' }], chosen: [{ role: 'assistant', content: 7 }], rejected: [{ role: 'assistant', content: 'b' }] },
      'Expected a string for chosen[0].content but received 7'],
    [{ prompt: [], chosen: [{ role: 'assistant', content: 'a' }], rejected: [{ role: 'assistant', content: 'b' }] },
      'Expected a non-empty array of messages for prompt but received an array of length 0'],
    [{ prompt: [{ role: 'user', content: 'hi' }], chosen: [{ role: 'assistant', content: 'a' }], rejected: [{ role: 'assistant', content: 'a' }] },
      'Expected chosen and rejected to differ but received identical chosen and rejected'],
    [{ chosen: [{ role: 'user', content: 'a' }], rejected: [{ role: 'user', content: 'b' }] },
      'Expected chosen and rejected conversations sharing at least one leading prompt message for chosen[0] but received "a"'],
    [{ chosen: [{ role: 'user', content: 'a' }], rejected: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] },
      'Expected messages after the shared prompt for chosen but received an array of length 1'],
  ];
  for (const [rec, msg] of conv) t.throws(() => tokenizeRecord(rec, l, 'c.jsonl:2'), { message: `c.jsonl:2: ${msg}` }, JSON.stringify(rec));
});

test('a template whose generation prompt is not a prefix of the conversation is an error', async (t) => {
  const tok = await Tokenizer.fromDir(join(TOK, 'think-template'));
  const rec = { prompt: [{ role: 'user', content: 'hi' }], chosen: [{ role: 'assistant', content: 'a' }], rejected: [{ role: 'assistant', content: 'b' }] };
  t.throws(() => tokenizeRecord(rec, tok, 'q.jsonl:9'), {
    message: /^q\.jsonl:9: Expected the chat template's rendering of prompt \+ chosen to start with the rendered prompt/,
  });
  // a tokenizer without any chat template: conversational data is an error naming the record and the files
  const none = await Tokenizer.fromDir(join(TOK, 'no-template'));
  t.throws(() => tokenizeRecord(rec, none, 'q.jsonl:9'), { message: /^q\.jsonl:9: No chat template for .*no-template/ });
  // no EOS defined: completions cannot be terminated
  const noEos = await Tokenizer.fromDir(join(TOK, 'no-eos'));
  t.is(noEos.eosTokenId, null);
  t.is(noEos.padTokenId, null);
  t.throws(() => tokenizeRecord({ prompt: 'a', chosen: 'b', rejected: 'c' }, noEos, 'q.jsonl:3'), {
    message: /^q\.jsonl:3: No EOS token for .*no-eos: expected eos_token in tokenizer_config\.json or eos_token_id in generation_config\.json \/ config\.json$/,
  });
});

test('chosen == rejected can be skipped and is counted', async (t) => {
  const tok = await gpt2();
  const p = tmpFile('dup.jsonl', [
    '{"prompt": "hello", "chosen": " world", "rejected": " the"}',
    '{"prompt": "hello", "chosen": " same", "rejected": " same"}',
    '{"prompt": "hello", "chosen": " the", "rejected": " world"}',
  ].join('\n'));
  const stats = newStats();
  const out = await all(p, tok, { onIdentical: 'skip', stats });
  t.is(out.length, 2);
  t.deepEqual(stats, { examples: 2, truncated: 0, dropped: 0, skippedIdentical: 1 });
  await t.throwsAsync(all(p, tok), { message: `${p}:2: Expected chosen and rejected to differ but received identical chosen and rejected` });
});

// tokenized.jsonl: prompt [1..6], chosen [10, 11, 12, 269], rejected [20, 21] (+ EOS 269)
test('truncation: keep_end / keep_start prompts, completions cut to fit maxLength', async (t) => {
  const tok = await gpt2();
  const f = join(DATA, 'tokenized.jsonl');
  t.deepEqual(await all(f, tok, { maxPromptLength: 4 }), [{ prompt_ids: [3, 4, 5, 6], chosen_ids: [10, 11, 12, 269], rejected_ids: [20, 21, 269] }]);
  t.deepEqual(await all(f, tok, { maxPromptLength: 4, truncationMode: 'keep_start' }), [{ prompt_ids: [1, 2, 3, 4], chosen_ids: [10, 11, 12, 269], rejected_ids: [20, 21, 269] }]);
  // 4 prompt + 4 chosen > 7: completions keep their first 7 - 4 = 3 tokens
  t.deepEqual(await all(f, tok, { maxLength: 7, maxPromptLength: 4 }), [{ prompt_ids: [3, 4, 5, 6], chosen_ids: [10, 11, 12], rejected_ids: [20, 21, 269] }]);
  // no prompt limit: 6 + 4 > 5, so the prompt is cut to maxLength - 1 = 4 (keep_start: first 4), completions to 1
  t.deepEqual(await all(f, tok, { maxLength: 5, truncationMode: 'keep_start' }), [{ prompt_ids: [1, 2, 3, 4], chosen_ids: [10], rejected_ids: [20] }]);
  // 6 + 4 = 10 fits exactly
  const stats = newStats();
  t.deepEqual(await all(f, tok, { maxLength: 10, stats }), [{ prompt_ids: [1, 2, 3, 4, 5, 6], chosen_ids: [10, 11, 12, 269], rejected_ids: [20, 21, 269] }]);
  t.is(stats.truncated, 0);
});

test('overlong policies: drop counts, error names file:line', async (t) => {
  const tok = await gpt2();
  const p = tmpFile('long.jsonl', [
    '{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4]}',
    '{"prompt_ids": [1, 2, 3, 4, 5], "chosen_ids": [3], "rejected_ids": [4]}',
    '{"prompt_ids": [1], "chosen_ids": [3, 3, 3, 3, 3], "rejected_ids": [4]}',
  ].join('\n'));
  const stats = newStats();
  const kept = await all(p, tok, { maxLength: 5, maxPromptLength: 3, overlongPolicy: 'drop', stats });
  t.deepEqual(kept, [{ prompt_ids: [1, 2], chosen_ids: [3, 269], rejected_ids: [4, 269] }]);
  t.deepEqual(stats, { examples: 1, truncated: 0, dropped: 2, skippedIdentical: 0 });
  await t.throwsAsync(all(p, tok, { maxLength: 5, maxPromptLength: 3, overlongPolicy: 'error' }), {
    message: `${p}:2: Expected at most maxPromptLength=3 prompt tokens but received 5`,
  });
  await t.throwsAsync(all(p, tok, { maxLength: 5, overlongPolicy: 'error' }), {
    message: `${p}:2: Expected at most maxLength=5 prompt+completion tokens but received 5+2`,
  });
  const truncStats = newStats();
  await all(p, tok, { maxLength: 5, maxPromptLength: 3, stats: truncStats });
  t.deepEqual(truncStats, { examples: 3, truncated: 2, dropped: 0, skippedIdentical: 0 });
});

test('option validation', async (t) => {
  const tok = await gpt2();
  const f = join(DATA, 'tokenized.jsonl');
  await t.throwsAsync(all(f, tok, { truncationMode: 'middle' as never }), { message: "Expected one of 'keep_start', 'keep_end' for truncationMode but received \"middle\"" });
  await t.throwsAsync(all(f, tok, { maxLength: 4, maxPromptLength: 4 }), { message: 'Expected maxPromptLength < maxLength (4) for maxPromptLength but received 4' });
  await t.throwsAsync(all(f, tok, { maxLenght: 4 } as never), { message: /^Unknown option 'maxLenght' for tokenizeExamples/ });
  t.throws(() => readRecords('x.csv'), { message: /^Expected a \.jsonl, .* for path but received "x\.csv"$/ });
});

test('readJsonl: CRLF, BOM, blank lines, chunk boundaries inside multi-byte characters', async (t) => {
  const lines = ['{"a": "é€😀"}', '', '  ', '{"a": "x"}', '{"a": "\\u00e9"}'];
  const p = tmpFile('crlf.jsonl', '\uFEFF' + lines.join('\r\n'));
  for (const chunkSize of [1, 2, 3, 5, 7, 64 * 1024]) {
    const got: [number, unknown][] = [];
    for await (const r of readJsonl(p, { chunkSize })) got.push([r.line, r.value]);
    t.deepEqual(got, [[1, { a: 'é€😀' }], [4, { a: 'x' }], [5, { a: 'é' }]], `chunkSize ${chunkSize}`);
  }
  await t.throwsAsync(async () => { for await (const _ of readJsonl(join(DATA, 'missing.jsonl'))) void _; }, {
    message: `${join(DATA, 'missing.jsonl')}: cannot read file (ENOENT)`,
  });
});

test('.json files: a top-level array of records, or JSON Lines', async (t) => {
  const tok = await gpt2();
  const rec = { prompt: 'hello', chosen: ' world', rejected: ' the' };
  const want = { prompt_ids: [259], chosen_ids: [264, 269], rejected_ids: [266, 269] };
  const arr = tmpFile('arr.json', JSON.stringify([rec, rec], null, 2));
  t.deepEqual(await all(arr, tok), [want, want]);
  const lines = tmpFile('lines.json', `${JSON.stringify(rec)}\n${JSON.stringify(rec)}\n`);
  t.deepEqual(await all(lines, tok), [want, want]);
  const badElem = tmpFile('bad.json', JSON.stringify([rec, { ...rec, rejected: 5 }]));
  await t.throwsAsync(all(badElem, tok), { message: `${badElem}: row 2: Expected a non-empty string for rejected but received 5` });
  const broken = tmpFile('broken.json', '[\n  {"prompt": "a",}\n]');
  await t.throwsAsync(all(broken, tok), { message: new RegExp(`^${broken.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: malformed JSON: .*\\(line 2, column 18\\)$`) });
});

test('recordsFromArray: in-memory records with row locations', async (t) => {
  const tok = await gpt2();
  const out: TokenizedExample[] = [];
  const src = recordsFromArray([{ prompt: 'hello', chosen: ' world', rejected: ' the' }, { prompt: 'hello', chosen: ' world' }], 'mem');
  await t.throwsAsync(async () => { for await (const e of tokenizeExamples(src, tok)) out.push(e); }, {
    message: 'mem: row 2: Expected a non-empty string for rejected but received undefined',
  });
  t.deepEqual(out, [{ prompt_ids: [259], chosen_ids: [264, 269], rejected_ids: [266, 269] }]);
});
