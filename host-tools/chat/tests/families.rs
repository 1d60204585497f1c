//! Chat templates in the layouts of the common model families (written here for the test, in those
//! families' styles: role checks through `raise_exception`, `loop.first`/`loop.last`, `namespace`, Python
//! string methods, multi-line templates that lean on `trim_blocks`/`lstrip_blocks`), rendered by our
//! renderer and by Python's jinja2 as transformers' `apply_chat_template` runs it
//! (`tests/jinja2_render.py`): the texts must agree byte for byte.

use enigma_chat::template::render;
use enigma_chat::{ChatError, ChatMessage};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Multi-line, as some model cards write it: the block tags' lines vanish, the expressions' do not.
const LLAMA2: &str = "{% if messages[0]['role'] == 'system' %}
    {% set loop_messages = messages[1:] %}
    {% set system_message = messages[0]['content'] %}
{% else %}
    {% set loop_messages = messages %}
    {% set system_message = false %}
{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if loop.index0 == 0 and system_message != false %}
        {% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}
    {% else %}
        {% set content = message['content'] %}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}
        {{ ' '  + content.strip() + ' ' + eos_token }}
    {% endif %}
{% endfor %}";

const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

const PHI3: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}";

const ZEPHYR: &str = "{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}";

/// A system message found anywhere through a `namespace`, string tests and filters (Qwen 2.5's style).
const QWEN_NS: &str = "{%- set ns = namespace(system='You are Qwen.', turns=0) -%}
{%- for m in messages if m.role == 'system' -%}{%- set ns.system = m.content -%}{%- endfor -%}
<|im_start|>system
{{ ns.system }}<|im_end|>
{% for m in messages | rejectattr('role', 'equalto', 'system') %}
{%- if m.content.startswith('/') %}{{ raise_exception('commands are not messages: ' ~ m.content) }}{% endif -%}
{%- set ns.turns = ns.turns + 1 -%}
<|im_start|>{{ m.role }}
{{ m.content | trim }}<|im_end|>{{ '\\n' if not loop.last or add_generation_prompt }}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}{# {{ ns.turns }} turns #}";

const FAMILIES: [(&str, &str); 8] = [
    ("chatml", CHATML),
    ("llama3", LLAMA3),
    ("llama2", LLAMA2),
    ("mistral", MISTRAL),
    ("gemma", GEMMA),
    ("phi3", PHI3),
    ("zephyr", ZEPHYR),
    ("qwen-namespace", QWEN_NS),
];

fn conversations() -> Vec<Vec<ChatMessage>> {
    vec![
        vec![ChatMessage::user("Hello!")],
        vec![
            ChatMessage::system("You are terse."),
            ChatMessage::user("What is 2+2?"),
        ],
        vec![
            ChatMessage::system("Be kind."),
            ChatMessage::user("  Héllo,\n wörld  "),
            ChatMessage::assistant(" Hi there! 😀 "),
            ChatMessage::user("Tell me a story about <tags> & {{ braces }}."),
        ],
        // Out of order for every family that checks roles.
        vec![
            ChatMessage::assistant("I speak first."),
            ChatMessage::user("/reset"),
        ],
    ]
}

fn jinja2_present(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jinja2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        enigma_testkit::skip_or_fail(
            test,
            "Python's jinja2 is not installed (pip install jinja2==3.1.6; .ci/run installs it)",
        );
    }
    ok
}

#[test]
fn common_family_templates_render_as_jinja2_renders_them() {
    let test = "common_family_templates_render_as_jinja2_renders_them";
    if !jinja2_present(test) {
        return;
    }
    let mut cases = Vec::new();
    let mut labels = Vec::new();
    for (family, template) in FAMILIES {
        for (i, messages) in conversations().into_iter().enumerate() {
            for (bos, eos) in [("<s>", "</s>"), ("<|begin_of_text|>", "<|eot_id|>")] {
                for add_generation_prompt in [true, false] {
                    labels.push((
                        format!("{family}, conversation {i}, bos {bos}, generation prompt {add_generation_prompt}"),
                        template,
                        messages.clone(),
                        bos,
                        eos,
                        add_generation_prompt,
                    ));
                    cases.push(json!({
                        "template": template,
                        "messages": messages,
                        "bos_token": bos,
                        "eos_token": eos,
                        "add_generation_prompt": add_generation_prompt,
                    }));
                }
            }
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jinja2_render.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let input = serde_json::to_vec(&cases).expect("json");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write cases");
    let out = child.wait_with_output().expect("jinja2_render.py");
    assert!(
        out.status.success(),
        "jinja2_render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("jinja2_render.py's JSON");
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), labels.len());
    let mut refused = 0;
    for ((label, template, messages, bos, eos, gen), want) in labels.iter().zip(results) {
        let ours = render(template, messages, bos, eos, *gen);
        match (want.get("text").and_then(Value::as_str), ours) {
            (Some(text), Ok(ours)) => assert_eq!(ours, text, "{label}"),
            (None, Err(ChatError::Refused(why))) => {
                refused += 1;
                assert_eq!(Some(why.as_str()), want["refused"].as_str(), "{label}");
            }
            (_, ours) => panic!("{label}: jinja2 gave {want}, we gave {ours:?}"),
        }
    }
    // The out-of-order conversation is refused by the families that check roles, so both paths ran.
    assert!(refused >= 4 * 4, "only {refused} refusals");
    eprintln!(
        "{} renders agree with jinja2 {}",
        labels.len(),
        v["jinja2"].as_str().unwrap_or("?")
    );
}
