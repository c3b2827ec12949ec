import { parser } from "@prometheus-io/lezer-promql";

type SyntaxNode = ReturnType<typeof parser.parse>["topNode"];

const COMPARISONS = new Set(["Eql", "Neq", "Gtr", "Lss", "Gte", "Lte"]);

/** Parses PromQL; throws naming the position of the first syntax error. */
export function parsePromQL(expr: string): SyntaxNode {
  const tree = parser.parse(expr);
  const cursor = tree.cursor();
  do {
    if (cursor.type.isError)
      throw new Error(
        `PromQL syntax error at ${cursor.from}: …${expr.slice(cursor.from, cursor.from + 30)}…`,
      );
  } while (cursor.next());
  const top = tree.topNode.firstChild;
  if (!top) throw new Error(`empty PromQL expression: ${JSON.stringify(expr)}`);
  return top;
}

const children = (node: SyntaxNode): SyntaxNode[] => {
  const out: SyntaxNode[] = [];
  for (let c = node.firstChild; c; c = c.nextSibling) out.push(c);
  return out;
};

/** The metric names an expression selects: `name{...}` and `{__name__="name"}`. */
export function metricNames(expr: string): string[] {
  const names = new Set<string>();
  const visit = (node: SyntaxNode) => {
    if (node.type.name === "VectorSelector") {
      const id = node.getChild("Identifier");
      if (id) names.add(expr.slice(id.from, id.to));
    }
    if (node.type.name === "UnquotedLabelMatcher") {
      const label = node.getChild("LabelName");
      const op = node.getChild("MatchOp");
      const value = node.getChild("StringLiteral");
      if (label && op && value && expr.slice(label.from, label.to) === "__name__") {
        if (op.getChild("EqlSingle"))
          names.add(JSON.parse(expr.slice(value.from, value.to).replaceAll("'", '"')));
        else throw new Error(`cannot check a __name__ matcher other than "=": ${expr}`);
      }
    }
    for (const c of children(node)) visit(c);
  };
  visit(parsePromQL(expr));
  return [...names].sort();
}

/** A number, or arithmetic on numbers only (`4 * 3600`, `(0.9)`, `-1`). */
function isScalarLiteral(node: SyntaxNode): boolean {
  switch (node.type.name) {
    case "NumberDurationLiteral":
      return true;
    case "ParenExpr":
    case "UnaryExpr": {
      const inner = children(node).filter((c) => c.type.name !== "UnaryOp");
      return inner.length === 1 && isScalarLiteral(inner[0]!);
    }
    case "BinaryExpr": {
      const [lhs, , ...rest] = children(node);
      const rhs = rest.at(-1);
      return !!lhs && !!rhs && isScalarLiteral(lhs) && isScalarLiteral(rhs);
    }
    default:
      return false;
  }
}

/**
 * The expression with every comparison against a constant removed: `a / b > 0.9` becomes `a / b`, `x == 0`
 * becomes `x`, `(cap > 0)` becomes `(cap)`. An alert's expression returns data only while it fires; without its
 * thresholds it returns the series the rule watches, so "returns data" says that the rule can see what it is
 * about. Set operators (`and`, `or`) are kept, with both sides stripped.
 */
export function withoutThresholds(expr: string): string {
  const render = (node: SyntaxNode): string => {
    if (node.type.name === "BinaryExpr") {
      const parts = children(node);
      const op = parts[1];
      const lhs = parts[0]!;
      const rhs = parts.at(-1)!;
      if (op && COMPARISONS.has(op.type.name)) {
        if (isScalarLiteral(rhs) && !isScalarLiteral(lhs)) return render(lhs);
        if (isScalarLiteral(lhs) && !isScalarLiteral(rhs)) return render(rhs);
      }
    }
    const parts = children(node);
    if (parts.length === 0) return expr.slice(node.from, node.to);
    let out = expr.slice(node.from, parts[0]!.from);
    parts.forEach((c, i) => {
      out += render(c);
      out += expr.slice(c.to, i + 1 < parts.length ? parts[i + 1]!.from : node.to);
    });
    return out;
  };
  return render(parsePromQL(expr));
}
