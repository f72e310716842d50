// Chat templates (Jinja, as stored with Hugging Face tokenizers) rendered with @huggingface/jinja.
// Every error names where the template came from (a chat_template.jinja path or "<dir>/tokenizer_config.json
// (chat_template)") so a user can find the template that failed. `raise_exception(msg)` (built into
// @huggingface/jinja) surfaces as "<origin>: chat template failed: <msg>".

import { Interpreter, Template } from '@huggingface/jinja';
import { ValidationError, checkArray, checkObject, checkString, fail } from './validate';

/** One chat message. `content` is a string for text chats; templates may also accept richer content. */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the header that starts an assistant turn (HF `add_generation_prompt`). Default false. */
  addGenerationPrompt?: boolean;
  /** Tool (function) descriptions passed to the template as `tools`. */
  tools?: unknown[];
  /** Further template variables (e.g. `documents`, `enable_thinking`); they cannot replace `messages`. */
  extra?: Record<string, unknown>;
}

export class ChatTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChatTemplateError';
  }
}

// Python Jinja (as used by transformers) raises UndefinedError when an attribute or item of an undefined value is
// read ({{ foo.bar }} with foo undefined, messages[5].content past the end); @huggingface/jinja renders "" instead.
// While ChatTemplate.render runs (it is synchronous) member access on an undefined value throws, like Python.
// Only member access is patched; a bare undefined name still renders "" in both.
let strictDepth = 0;
type Node = { type: string; value?: unknown; object?: Node; property?: Node; computed?: boolean };
type Evaluator = (this: unknown, node: Node, env: unknown) => { type: string };
const proto = Interpreter.prototype as unknown as Record<string, Evaluator> & { __tdpoStrictMembers?: boolean };
if (!proto.__tdpoStrictMembers) {
  const evaluate = proto.evaluate;
  const member = proto.evaluateMemberExpression;
  if (typeof evaluate === 'function' && typeof member === 'function') {
    proto.__tdpoStrictMembers = true;
    proto.evaluate = function (node, env) {
      if (node && node.type === '__tdpoEvaluated') return node.value as { type: string };
      return evaluate.call(this, node, env);
    };
    proto.evaluateMemberExpression = function (expr, env) {
      if (strictDepth === 0) return member.call(this, expr, env);
      const object = (this as { evaluate: Evaluator }).evaluate(expr.object!, env);
      if (object.type === 'UndefinedValue') throw new Error(`'${exprText(expr.object!)}' is undefined`);
      return member.call(this, { ...expr, object: { type: '__tdpoEvaluated', value: object } }, env);
    };
  }
}

function exprText(n: Node): string {
  if (n.type === 'Identifier') return String(n.value);
  if (n.type === 'MemberExpression') {
    return exprText(n.object!) + (n.computed ? `[${exprText(n.property!)}]` : `.${exprText(n.property!)}`);
  }
  if (n.type === 'StringLiteral') return JSON.stringify(n.value);
  if (n.type === 'IntegerLiteral' || n.type === 'FloatLiteral') return String(n.value);
  return '...';
}

/** A parsed chat template plus the special-token strings it may reference. */
export class ChatTemplate {
  private readonly template: Template;

  /**
   * @param source the Jinja text
   * @param origin where it came from (a file path, or a file path plus field): named in every error
   * @param specialTokens values for `bos_token`, `eos_token`, `pad_token`, `unk_token` (null when absent)
   */
  constructor(
    readonly source: string,
    readonly origin: string,
    readonly specialTokens: Record<string, string | null> = {},
  ) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new ChatTemplateError(`${origin}: cannot parse chat template: ${(e as Error).message}`);
    }
  }

  /** Renders `messages`. Throws ChatTemplateError naming the template on any template failure. */
  render(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    checkMessages(messages, 'messages');
    const vars: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(this.specialTokens)) vars[k] = v ?? '';
    if (opts.extra !== undefined) {
      for (const [k, v] of Object.entries(checkObject(opts.extra, 'extra'))) {
        if (k === 'messages' || k === 'add_generation_prompt' || k === 'tools') {
          throw new ValidationError(`Expected extra template variables other than '${k}' for extra but received '${k}' (use the dedicated option)`);
        }
        vars[k] = v;
      }
    }
    vars.messages = messages;
    vars.add_generation_prompt = opts.addGenerationPrompt ?? false;
    if (opts.tools !== undefined) vars.tools = checkArray(opts.tools, 'tools');
    strictDepth++;
    try {
      return this.template.render(vars);
    } catch (e) {
      throw new ChatTemplateError(`${this.origin}: chat template failed: ${(e as Error).message}`);
    } finally {
      strictDepth--;
    }
  }
}

/** Checks an array of {role: non-empty string, content: string} messages; `field` names it in errors. */
export function checkMessages(v: unknown, field: string, allowedRoles?: readonly string[]): ChatMessage[] {
  const arr = checkArray(v, field);
  for (let i = 0; i < arr.length; i++) {
    const m = arr[i];
    if (typeof m !== 'object' || m === null || Array.isArray(m)) fail('a message object {role, content}', `${field}[${i}]`, m);
    const rec = m as Record<string, unknown>;
    const role = checkString(rec.role, `${field}[${i}].role`, { nonEmpty: true });
    if (allowedRoles && !allowedRoles.includes(role)) {
      fail(`one of ${allowedRoles.map((r) => `'${r}'`).join(', ')}`, `${field}[${i}].role`, role);
    }
    checkString(rec.content, `${field}[${i}].content`);
  }
  return arr as ChatMessage[];
}
