// The DeepSeek-R1 distill chat template, written for thinktune; it renders exactly as the official one
// (as llama.cpp ships it, with its enable_thinking switch):
// - bos, then the last system message's content, with no separator;
// - user turns as <｜User｜>content; assistant turns as <｜Assistant｜>content<｜end▁of▁sentence｜>, with
//   everything up to the last </think> dropped, so earlier reasoning never reaches the prompt;
// - tool calls and tool outputs in DeepSeek's <｜tool▁…｜> framing;
// - add_generation_prompt ends with <｜Assistant｜><think>\n, plus </think> unless enable_thinking is true.
export const r1DistillChatTemplate = [
  "{%- set turn = namespace(after_tool=false, call_written=false, output_written=false, system='') -%}",
  "{%- for message in messages -%}",
  "{%- if message.role == 'system' -%}{%- set turn.system = message.content -%}{%- endif -%}",
  "{%- endfor -%}",
  "{{- bos_token -}}{{- turn.system -}}",
  "{%- for message in messages -%}",
  "{%- if message.role == 'user' -%}",
  "{%- set turn.after_tool = false -%}",
  "{{- '<｜User｜>' + message.content -}}",
  "{%- elif message.role == 'assistant' -%}",
  "{%- if message.tool_calls -%}",
  "{%- set turn.after_tool = false -%}",
  "{%- for call in message.tool_calls -%}",
  "{%- if turn.call_written -%}{{- '\\n<｜tool▁call▁begin｜>' -}}",
  "{%- else -%}{{- '<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' -}}{%- set turn.call_written = true -%}",
  "{%- endif -%}",
  "{{- call.type + '<｜tool▁sep｜>' + call.function.name + '\\n```json\\n' + (call.function.arguments | tojson) + '\\n```<｜tool▁call▁end｜>' -}}",
  "{%- endfor -%}",
  "{{- '<｜tool▁calls▁end｜><｜end▁of▁sentence｜>' -}}",
  "{%- endif -%}",
  "{%- if message.content is not none -%}",
  "{%- if turn.after_tool -%}",
  "{{- '<｜tool▁outputs▁end｜>' + message.content + '<｜end▁of▁sentence｜>' -}}",
  "{%- set turn.after_tool = false -%}",
  "{%- else -%}",
  "{{- '<｜Assistant｜>' + message.content.split('</think>')[-1] + '<｜end▁of▁sentence｜>' -}}",
  "{%- endif -%}",
  "{%- endif -%}",
  "{%- elif message.role == 'tool' -%}",
  "{%- set turn.after_tool = true -%}",
  "{%- if turn.output_written -%}{{- '\\n<｜tool▁output▁begin｜>' -}}",
  "{%- else -%}{{- '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' -}}{%- set turn.output_written = true -%}",
  "{%- endif -%}",
  "{{- message.content + '<｜tool▁output▁end｜>' -}}",
  "{%- endif -%}",
  "{%- endfor -%}",
  "{%- if turn.after_tool -%}{{- '<｜tool▁outputs▁end｜>' -}}",
  "{%- elif add_generation_prompt -%}{{- '<｜Assistant｜><think>\\n' -}}{%- if not enable_thinking -%}{{- '</think>' -}}{%- endif -%}",
  "{%- endif -%}",
].join("");

/**
 * Whether a chat template is R1-style: DeepSeek's <｜User｜>/<｜Assistant｜> turns and a generation prompt
 * that opens a <think> block (the official distill templates and ours).
 */
export function isR1ChatTemplate(template: string): boolean {
  return template.includes("<｜User｜>") && template.includes("<｜Assistant｜>") && /<｜Assistant｜><think>(\\n|\n)/.test(template);
}
