// The reference for the equality test: transformers.js's tokenizers (the
// @lenml/tokenizers fork) on the same tokenizer files, and for chat
// templates @huggingface/jinja (the engine transformers.js renders them
// with; the copy bundled in @lenml/tokenizers is too old for Qwen 3's),
// whose text is then encoded without adding special tokens, as
// apply_chat_template and vLLM do. Reads one JSON job on
// stdin: {"dir": models folder, "texts": [base64 bytes], "chats":
// [{"messages": [...], "add_generation_prompt": bool, "tools": [...],
// "kwargs": {...}, "continue_final_message": bool}]}; writes {"texts":
// [{"special": ids, "plain": ids}], "chats": [ids]} on stdout.
"use strict";
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require("@lenml/tokenizers");
const { Template } = require("@huggingface/jinja");

const job = JSON.parse(fs.readFileSync(0, "utf8"));
const config = JSON.parse(fs.readFileSync(path.join(job.dir, "tokenizer_config.json"), "utf8"));
const tok = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(path.join(job.dir, "tokenizer.json"), "utf8")),
  tokenizerConfig: config,
});
const template = new Template(config.chat_template);
const specials = {};
for (const name of ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]) {
  const v = config[name];
  if (v !== undefined && v !== null) specials[name] = typeof v === "string" ? v : v.content;
}
// Hugging Face's apply_chat_template for continue_final_message: the
// rendered chat cut after the final message's (trimmed) text.
function continueFinal(rendered, final) {
  const trimmed = final.trim();
  const loc = rendered.lastIndexOf(trimmed);
  if (loc < 0) throw new Error("final message not in the rendered chat");
  const left = final.trimStart();
  if (rendered.slice(loc, loc + left.length) === final) return rendered.slice(0, loc + left.length);
  return rendered.slice(0, loc + trimmed.length);
}

const out = { texts: [], chats: [] };
for (const b64 of job.texts || []) {
  // Buffer's UTF-8 decoder replaces ill-formed sequences as Python's
  // decode("utf-8", "replace") does.
  const text = Buffer.from(b64, "base64").toString("utf8");
  out.texts.push({
    special: Array.from(tok.encode(text, { add_special_tokens: true })),
    plain: Array.from(tok.encode(text, { add_special_tokens: false })),
  });
}
for (const c of job.chats || []) {
  const vars = { ...specials, messages: c.messages, add_generation_prompt: c.add_generation_prompt };
  if (c.tools) vars.tools = c.tools;
  Object.assign(vars, c.kwargs || {});
  let text = template.render(vars);
  if (c.continue_final_message) text = continueFinal(text, c.messages[c.messages.length - 1].content);
  out.chats.push(Array.from(tok.encode(text, { add_special_tokens: false })));
}
process.stdout.write(JSON.stringify(out));
