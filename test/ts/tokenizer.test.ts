// Tokenizer and chat-template tests on the hand-built fixtures in test/fixtures/tokenizers (see generate.mjs there).
// Byte-level fixtures: id of a single-byte token == the byte value; merge of rank r has id 256 + r.
// Byte symbols: 'Ġ' = space (32), 'Ċ' = newline (10), 'ĉ' = tab (9).
import test from 'ava';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '../../lib/tokenizer';
import { ChatTemplate } from '../../lib/chat_template';

const FIX = join(__dirname, '..', '..', '..', 'test', 'fixtures', 'tokenizers');
const gpt2 = () => Tokenizer.fromDir(join(FIX, 'gpt2-tiny'));
const llama = () => Tokenizer.fromDir(join(FIX, 'llama3-tiny'));

// gpt2-tiny merges (rank -> id): he 256, ll 257, hell 258, hello 259, Ġw 260, or 261, Ġwor 262, ld 263,
// Ġworld 264, Ġt 265, Ġthe 266, é(Ã©) 267, ĊĊ 268; <|endoftext|> = 269.

test('gpt2-tiny: merges applied lowest rank first', async (t) => {
  const tok = await gpt2();
  // "hello": h e l l o -> (h,e) rank 0 -> he l l o -> (l,l) rank 1 -> he ll o -> hell o -> hello = 259.
  // " world": Ġ w o r l d -> Ġw(4) -> or(5) -> Ġwor(6) -> ld(7) -> Ġworld(8) = 264.
  t.deepEqual(tok.encode('hello world'), [259, 264]);
  // "the" has no leading space: t + he; " the" -> Ġ t h e -> he first (rank 0), then Ġt (9), then Ġthe (10) = 266.
  t.deepEqual(tok.encode('the the'), [116, 256, 266]);
  // "world" without a space: w o r l d -> or, ld; no (w, or) merge -> 119 261 263.
  t.deepEqual(tok.encode('world'), [119, 261, 263]);
});

test('gpt2-tiny: spaces, tabs and newlines follow the GPT-2 split', async (t) => {
  const tok = await gpt2();
  // " hello  world\n": pieces " hello" (Ġ + hello: no Ġh merge), " " (the space before another space),
  // " world" (Ġworld), "\n".
  t.deepEqual(tok.encode(' hello  world\n'), [32, 259, 32, 264, 10]);
  // "hello\tworld\n\nthe": "\t" = 9; "world" = 119 261 263; the first "\n" is split off because whitespace
  // followed by a letter keeps its last char separate, so two single newlines (10 10); "the" = 116 256.
  t.deepEqual(tok.encode('hello\tworld\n\nthe'), [259, 9, 119, 261, 263, 10, 10, 116, 256]);
  // "\n\n" at the end of the text stays one piece -> Ċ Ċ merge (rank 12) = 268.
  t.deepEqual(tok.encode('hello\n\n'), [259, 268]);
});

test('gpt2-tiny: unicode is split into UTF-8 bytes', async (t) => {
  const tok = await gpt2();
  // "café": c a f + é = C3 A9 -> (Ã, ©) merge rank 11 = 267.
  // " €": Ġ + E2 82 AC -> 32 226 130 172 (no merges). "😀" = F0 9F 98 80.
  t.deepEqual(tok.encode('café €'), [99, 97, 102, 267, 32, 226, 130, 172]);
  t.deepEqual(tok.encode('😀'), [240, 159, 152, 128]);
  t.is(tok.decode([99, 97, 102, 267, 32, 226, 130, 172]), 'café €');
});

test('gpt2-tiny: special tokens are matched whole and can be skipped when decoding', async (t) => {
  const tok = await gpt2();
  const ids = tok.encode('hello<|endoftext|>world');
  t.deepEqual(ids, [259, 269, 119, 261, 263]);
  t.is(tok.decode(ids), 'hello<|endoftext|>world');
  t.is(tok.decode(ids, { skipSpecialTokens: true }), 'helloworld');
  t.is(tok.eosTokenId, 269);
  t.is(tok.bosTokenId, 269);
  t.is(tok.padTokenId, 269); // no pad_token: falls back to EOS
  t.is(tok.vocabSize, 270);
  t.is(tok.decode([]), '');
  // add_bos_token is false: no special tokens are added
  t.deepEqual(tok.encode('hello', { addSpecialTokens: true }), [259]);
});

test('gpt2-tiny: decode round-trips mixed text', async (t) => {
  const tok = await gpt2();
  const s = ' the café\thello\n\n  world 😀 €\r\n';
  t.is(tok.decode(tok.encode(s)), s);
});

test('decode rejects ids outside the vocabulary', async (t) => {
  const tok = await gpt2();
  t.throws(() => tok.decode([259, 999]), { message: 'Expected token ids in [0, 270) for ids[1] but received 999' });
  t.throws(() => tok.decode([1.5]), { message: /ids\[0\] but received 1.5/ });
});

// llama3-tiny merges (rank -> id): Hi 256, Ġt 257, he 258, Ġthe 259, re 260, Ġthere 261, us 262, use 263,
// user 264, ĊĊ 265, OK 266; specials: <|begin_of_text|> 267, <|end_of_text|> 268, <|start_header_id|> 269,
// <|end_header_id|> 270, <|eot_id|> 271. Pre-tokenizer: own regex split, then byte-level without regex.

test('llama3-tiny: BOS from the post-processor, special ids from config files', async (t) => {
  const tok = await llama();
  // " there": Ġ t h e r e -> Ġt (1) -> he (2) -> Ġthe (3) -> re (4) -> Ġthere (5) = 261; "\n\n" is one piece = 265.
  t.deepEqual(tok.encode('Hi there\n\nOK'), [267, 256, 261, 265, 266]);
  t.deepEqual(tok.encode('Hi there\n\nOK', { addSpecialTokens: false }), [256, 261, 265, 266]);
  t.is(tok.bosTokenId, 267);
  t.is(tok.eosTokenId, 271); // tokenizer_config eos_token <|eot_id|>
  t.deepEqual(tok.eosTokenIds, [271, 268]); // plus generation_config.json's list
  t.is(tok.padTokenId, 271);
  t.is(tok.vocabSize, 272);
});

test('llama3-tiny: chat template from chat_template.jinja, rendered and encoded', async (t) => {
  const tok = await llama();
  const messages = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: '  Hi there\n' }, // the template trims content
    { role: 'assistant', content: 'OK' },
  ];
  t.is(
    tok.applyChatTemplate(messages),
    '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>' +
      '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
      '<|start_header_id|>assistant<|end_header_id|>\n\nOK<|eot_id|>',
  );
  const prompt = tok.applyChatTemplate([{ role: 'user', content: 'Hi there' }], { addGenerationPrompt: true });
  t.is(prompt, '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n');
  // "user" -> us (6) -> use (7) -> user (8) = 264; "assistant" has no merges (its bytes).
  const assistant = [...'assistant'].map((c) => c.charCodeAt(0));
  t.deepEqual(tok.encode(prompt, { addSpecialTokens: false }), [267, 269, 264, 270, 265, 256, 261, 271, 269, ...assistant, 270, 265]);
});

test('chat template: raise_exception and template errors name the template file', async (t) => {
  const tok = await llama();
  const jinja = join(FIX, 'llama3-tiny', 'chat_template.jinja');
  const e = t.throws(() => tok.applyChatTemplate([{ role: 'robot', content: 'x' }]));
  t.is(e?.message, `${jinja}: chat template failed: Unsupported role: robot`);
  const bad = await Tokenizer.fromDir(join(FIX, 'bad-template'));
  const e2 = t.throws(() => bad.applyChatTemplate([{ role: 'user', content: 'x' }]));
  t.true(e2?.message.startsWith(`${join(FIX, 'bad-template', 'chat_template.jinja')}: chat template failed:`), e2?.message);
});

test('chatml-tiny: inline chat_template, pad token, no BOS', async (t) => {
  const tok = await Tokenizer.fromDir(join(FIX, 'chatml-tiny'));
  t.is(tok.padTokenId, 269);
  t.is(tok.eosTokenId, 271);
  t.is(tok.bosTokenId, null);
  const text = tok.applyChatTemplate(
    [{ role: 'system', content: 'hello' }, { role: 'user', content: 'the world' }],
    { addGenerationPrompt: true },
  );
  t.is(text, '<|im_start|>system\nhello<|im_end|>\n<|im_start|>user\nthe world<|im_end|>\n<|im_start|>assistant\n');
  // "system" bytes; "\n" 10; hello 259; "the" = t he; " world" = 264
  const sys = [...'system'].map((c) => c.charCodeAt(0));
  t.deepEqual(tok.encode('<|im_start|>system\nhello<|im_end|>\n', { addSpecialTokens: false }), [270, ...sys, 10, 259, 271, 10]);
  t.deepEqual(tok.encode('the world', { addSpecialTokens: false }), [116, 256, 264]);
});

test('errors name the file: missing tokenizer.json, invalid JSON with position, missing template', async (t) => {
  const missing = join(FIX, 'does-not-exist');
  await t.throwsAsync(Tokenizer.fromDir(missing), { message: `${join(missing, 'tokenizer.json')}: cannot read file (ENOENT)` });
  const broken = join(FIX, 'broken-json', 'tokenizer.json');
  const e = await t.throwsAsync(Tokenizer.fromDir(join(FIX, 'broken-json')));
  t.true(e?.message.startsWith(`${broken}: invalid JSON:`), e?.message);
  t.regex(e?.message ?? '', /line 2, column 27/);
  const none = await Tokenizer.fromDir(join(FIX, 'no-template'));
  t.false(none.hasChatTemplate());
  t.throws(() => none.applyChatTemplate([{ role: 'user', content: 'hi' }]), {
    message: new RegExp(`^No chat template for .*no-template: expected .*chat_template\\.jinja or a chat_template field in .*tokenizer_config\\.json$`),
  });
});

test('applyChatTemplate validates messages and extra variables', async (t) => {
  const tok = await llama();
  t.throws(() => tok.applyChatTemplate([{ role: 'user', content: 3 } as never]), { message: 'Expected a string for messages[0].content but received 3' });
  t.throws(() => tok.applyChatTemplate([{ content: 'x' } as never]), { message: 'Expected a non-empty string for messages[0].role but received undefined' });
  t.throws(() => tok.applyChatTemplate([], { extra: { messages: [] } }), { message: /other than 'messages'/ });
});

// spm-tiny (SentencePiece / Llama-2 style): normalizer prepends "▁" and maps " " -> "▁"; BPE with byte fallback.
// ids: <unk> 0, <s> 1, </s> 2, <0xXX> = 3 + byte; pieces ▁ 259, h 260, e 261, l 262, o 263, w 264, r 265, d 266,
// he 267, ll 268, hell 269, hello 270, ▁hello 271, ▁w 272, or 273, ▁wor 274, ld 275, ▁world 276, é 277.
test('spm-tiny: metaspace normalization, merges across the whole text, byte fallback', async (t) => {
  const tok = await Tokenizer.fromDir(join(FIX, 'spm-tiny'));
  // "▁hello▁world": he, ll, hell, hello, ▁hello (rank 4), then ▁w (5), or (6), ▁wor (7), ld (8), ▁world (9)
  t.deepEqual(tok.encode('hello world'), [1, 271, 276]);
  // "▁héllo▁😀": no (▁, h) merge; h é ll o (only l l merges); "▁"; 😀 is not a piece -> bytes F0 9F 98 80
  t.deepEqual(tok.encode('héllo 😀'), [1, 259, 260, 277, 268, 263, 259, 3 + 0xf0, 3 + 0x9f, 3 + 0x98, 3 + 0x80]);
  // tab and newline fall back to <0x09> and <0x0A>; "world" without "▁" = w or ld
  t.deepEqual(tok.encode('hello\tworld\n'), [1, 271, 3 + 9, 264, 273, 275, 3 + 10]);
  t.deepEqual(tok.encode('world</s>', { addSpecialTokens: false }), [276, 2]);
  t.is(tok.decode([1, 259, 260, 277, 268, 263, 259, 243, 162, 155, 131], { skipSpecialTokens: true }), 'héllo 😀');
  t.is(tok.decode([271, 3 + 9, 264, 273, 275, 3 + 10]), 'hello\tworld\n');
  t.is(tok.bosTokenId, 1);
  t.is(tok.eosTokenId, 2);
  t.is(tok.padTokenId, 2);
  t.is(tok.vocabSize, 278);
});

test('special tokens from special_tokens_map.json (AddedToken objects or strings)', async (t) => {
  const tok = await Tokenizer.fromDir(join(FIX, 'special-map'));
  t.is(tok.eosToken, '<|endoftext|>');
  t.is(tok.eosTokenId, 269);
  t.is(tok.padTokenId, 269);
  t.is(tok.bosTokenId, null);
});

test('add_bos_token / add_eos_token of tokenizer_config.json are ignored next to tokenizer.json (transformers 5)', async (t) => {
  const tok = await Tokenizer.fromDir(join(FIX, 'flags-bos-eos'));
  // The post-processor adds nothing, so nothing is added (transformers 5 drops the flags when tokenizer.json exists).
  t.deepEqual(tok.encode('hello world'), [259, 264]);
  t.deepEqual(tok.encode('hello world', { addSpecialTokens: false }), [259, 264]);
  t.deepEqual(tok.encode('<s>hello<|endoftext|>'), [270, 259, 269]);
});

test('chat template: attribute of an undefined value is an error (as in Python Jinja), a bare undefined name is ""', (t) => {
  const origin = '/models/x/chat_template.jinja';
  const msgs = [{ role: 'user', content: 'hi' }];
  t.throws(() => new ChatTemplate('{{ foo.bar }}', origin).render(msgs), { message: `${origin}: chat template failed: 'foo' is undefined` });
  t.throws(() => new ChatTemplate('{{ messages[3].content }}', origin).render(msgs), { message: `${origin}: chat template failed: 'messages[3]' is undefined` });
  t.is(new ChatTemplate('[{{ foo }}]{{ messages[0].missing }}{% if messages[0].x is defined %}D{% endif %}{{ messages[0]["role"] }}', origin).render(msgs), '[]user');
  t.throws(() => new ChatTemplate('{% if %}', origin), { message: /^\/models\/x\/chat_template\.jinja: cannot parse chat template: / });
  // templates rendered outside ChatTemplate keep @huggingface/jinja's own behaviour
  t.is(new Template('{{ foo.bar }}').render({}), '');
});
