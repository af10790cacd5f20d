package dev.pgwarden.compat;

import java.util.Iterator;
import java.util.List;
import java.util.Map;

/** A minimal JSON writer for the scenario document (maps, lists, strings, numbers, booleans). */
final class Json {
  private Json() {}

  /** Serializes {@code value}, replacing every occurrence of {@code replace} in strings. */
  static String write(Object value, String replace, String with) {
    StringBuilder out = new StringBuilder();
    write(out, value, replace, with, 0);
    return out.toString();
  }

  private static void indent(StringBuilder out, int depth) {
    out.append('\n');
    for (int i = 0; i < depth; i++) {
      out.append("  ");
    }
  }

  private static void write(StringBuilder out, Object value, String replace, String with, int depth) {
    if (value == null) {
      out.append("null");
    } else if (value instanceof Boolean || value instanceof Integer || value instanceof Long
        || value instanceof Short) {
      out.append(value);
    } else if (value instanceof Map<?, ?> map) {
      if (map.isEmpty()) {
        out.append("{}");
        return;
      }
      out.append('{');
      Iterator<? extends Map.Entry<?, ?>> it = map.entrySet().iterator();
      while (it.hasNext()) {
        Map.Entry<?, ?> e = it.next();
        indent(out, depth + 1);
        string(out, String.valueOf(e.getKey()), replace, with);
        out.append(": ");
        write(out, e.getValue(), replace, with, depth + 1);
        if (it.hasNext()) {
          out.append(',');
        }
      }
      indent(out, depth);
      out.append('}');
    } else if (value instanceof List<?> list) {
      if (list.isEmpty()) {
        out.append("[]");
        return;
      }
      boolean flat = list.stream().noneMatch(v -> v instanceof Map || v instanceof List);
      out.append('[');
      for (int i = 0; i < list.size(); i++) {
        if (flat) {
          if (i > 0) {
            out.append(", ");
          }
        } else {
          indent(out, depth + 1);
        }
        write(out, list.get(i), replace, with, depth + 1);
        if (!flat && i + 1 < list.size()) {
          out.append(',');
        }
      }
      if (!flat) {
        indent(out, depth);
      }
      out.append(']');
    } else if (value instanceof int[] ints) {
      List<Integer> boxed = new java.util.ArrayList<>();
      for (int v : ints) {
        boxed.add(v);
      }
      write(out, boxed, replace, with, depth);
    } else {
      // Doubles, BigDecimals, dates...: as strings, so that no precision is lost or invented.
      string(out, value.toString(), replace, with);
    }
  }

  private static void string(StringBuilder out, String s, String replace, String with) {
    if (replace != null && !replace.isEmpty()) {
      s = s.replace(replace, with);
    }
    out.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        case '\n' -> out.append("\\n");
        case '\r' -> out.append("\\r");
        case '\t' -> out.append("\\t");
        case '\b' -> out.append("\\b");
        case '\f' -> out.append("\\f");
        default -> {
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    out.append('"');
  }
}
