"""Renders chat templates the way transformers' apply_chat_template does (jinja2's immutable sandbox,
trim_blocks, lstrip_blocks, raise_exception), for tests/families.rs to hold our renderer to.

stdin: a JSON list of {template, messages, bos_token, eos_token, add_generation_prompt};
stdout: a JSON list, one entry a case: {"text": ...} or {"refused": message}."""

import json
import sys

import jinja2
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    out = []
    for case in json.load(sys.stdin):
        template = env.from_string(case.pop("template"))
        try:
            out.append({"text": template.render(**case)})
        except TemplateError as e:
            out.append({"refused": str(e)})
    json.dump({"jinja2": jinja2.__version__, "results": out}, sys.stdout)


if __name__ == "__main__":
    main()
