"""`pixtral-runtime` entrypoint: one binary, three subcommands, each module parses its own flags."""

from __future__ import annotations

import sys

USAGE = """usage: pixtral-runtime {serve,router,tiny-model} [options]

  serve       start vLLM for Pixtral under the supervisor (health, readiness, drain)
  router      run the tenant-facing OpenAI-compatible router
  tiny-model  write a random-weight tiny Pixtral in Mistral's native format
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        from pixtral_runtime.supervisor.main import main as serve_main

        return serve_main(rest)
    if command == "router":
        from pixtral_runtime.router.main import main as router_main

        return router_main(rest)
    if command == "tiny-model":
        from pixtral_runtime.tiny_model import main as tiny_main

        return tiny_main(rest)
    print(f"pixtral-runtime: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
