"""Size of the package: total lines, long modules, long functions (issue 11's goals).

    python benchmarks/code_size.py [--root camjax] [--max_module 450] [--max_function 60]

A line is a physical line of a `.py` file (blank lines and comments included, as `wc -l`
counts them). A function's length runs from its `def` line to its last line, docstring
included; decorators are not counted. Exits 0 either way: it reports, it does not gate.
"""

import argparse
import ast
import pathlib


def module_sizes(root: pathlib.Path) -> dict[str, int]:
    """Lines per module under `root`, keyed by path relative to root's parent."""
    return {
        str(p.relative_to(root.parent)): len(p.read_text().splitlines())
        for p in sorted(root.rglob("*.py"))
    }


def function_sizes(root: pathlib.Path) -> list[tuple[int, str]]:
    """(lines, 'path:qualname') for every function and method under `root`."""
    out = []
    for p in sorted(root.rglob("*.py")):
        tree = ast.parse(p.read_text())
        stack = [(node, "") for node in tree.body]
        while stack:
            node, prefix = stack.pop()
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{node.name}"
                if not isinstance(node, ast.ClassDef):
                    rel = p.relative_to(root.parent)
                    out.append((node.end_lineno - node.lineno + 1, f"{rel}:{name}"))
                stack.extend((child, name + ".") for child in node.body)
    return sorted(out, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="camjax")
    parser.add_argument("--max_module", type=int, default=450)
    parser.add_argument("--max_function", type=int, default=60)
    args = parser.parse_args()
    root = pathlib.Path(args.root).resolve()
    modules = module_sizes(root)
    functions = function_sizes(root)
    print(f"{args.root}/: {sum(modules.values())} lines in {len(modules)} modules")
    long_modules = sorted(((n, m) for m, n in modules.items() if n > args.max_module), reverse=True)
    print(f"modules over {args.max_module} lines: {len(long_modules)}")
    for n, m in long_modules:
        print(f"  {n:5d}  {m}")
    long_functions = [(n, f) for n, f in functions if n > args.max_function]
    print(f"functions over {args.max_function} lines: {len(long_functions)}")
    for n, f in long_functions:
        print(f"  {n:5d}  {f}")


if __name__ == "__main__":
    main()
