//! Pure text edits for `line` and `block` resources. No I/O: the same input always
//! gives the same output, and applying an edit to its own output changes nothing.

use regex::Regex;

/// Ensures `line` is present (or absent) in `text`.
///
/// Present: when the exact line is already there, nothing changes (so a second run
/// never appends again, whatever `regexp` matches); otherwise the last line matching
/// `regexp` is replaced; otherwise the line is appended.
/// Absent: every line equal to `line` or matching `regexp` is removed.
pub fn edit_line(text: &str, line: &str, regexp: Option<&Regex>, present: bool) -> String {
    let mut lines: Vec<&str> = split_lines(text);
    if present {
        if lines.contains(&line) {
            return text.to_string();
        }
        if let Some(re) = regexp
            && let Some(i) = lines.iter().rposition(|l| re.is_match(l))
        {
            lines[i] = line;
        } else {
            lines.push(line);
        }
    } else {
        let before = lines.len();
        lines.retain(|l| *l != line && !regexp.is_some_and(|re| re.is_match(l)));
        if lines.len() == before {
            return text.to_string();
        }
    }
    join_lines(&lines)
}

/// Ensures a marked block holds `block` (or is gone).
///
/// The block sits between `marker` with `{mark}` replaced by `BEGIN` and by `END`.
/// An existing block is replaced in place; a missing one is appended.
pub fn edit_block(text: &str, block: &str, marker: &str, present: bool) -> String {
    let begin = marker.replace("{mark}", "BEGIN");
    let end = marker.replace("{mark}", "END");
    let lines = split_lines(text);
    let b = lines.iter().position(|l| *l == begin);
    let e = b.and_then(|b| lines[b..].iter().position(|l| *l == end).map(|e| b + e));
    let mut wanted: Vec<&str> = Vec::new();
    if present {
        wanted.push(&begin);
        wanted.extend(split_lines(block));
        wanted.push(&end);
    }
    let mut out: Vec<&str> = Vec::with_capacity(lines.len() + wanted.len());
    match (b, e) {
        (Some(b), Some(e)) => {
            out.extend(&lines[..b]);
            out.extend(&wanted);
            out.extend(&lines[e + 1..]);
        }
        _ if present => {
            out.extend(&lines);
            out.extend(&wanted);
        }
        _ => return text.to_string(),
    }
    join_lines(&out)
}

fn split_lines(text: &str) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    text.strip_suffix('\n')
        .unwrap_or(text)
        .split('\n')
        .collect()
}

fn join_lines(lines: &[&str]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replaces_the_last_match_and_never_appends_twice() {
        let re = Regex::new("^Port ").unwrap();
        let once = edit_line("Port 22\nX 1\nPort 2222\n", "Port 2200", Some(&re), true);
        assert_eq!(once, "Port 22\nX 1\nPort 2200\n");
        // The regexp still matches line 1, but the line is present: no change.
        assert_eq!(edit_line(&once, "Port 2200", Some(&re), true), once);
        // A regexp that does not match the line itself (Ansible's classic re-append).
        let re = Regex::new("^#?MaxAuthTries").unwrap();
        let a = edit_line("", "MaxAuthTries 3", Some(&re), true);
        assert_eq!(
            edit_line(&a, "MaxAuthTries 3", Some(&re), true),
            "MaxAuthTries 3\n"
        );
    }

    #[test]
    fn appends_to_a_file_without_trailing_newline() {
        assert_eq!(edit_line("a", "b", None, true), "a\nb\n");
    }

    #[test]
    fn absent_removes_every_match() {
        let re = Regex::new("^x=").unwrap();
        assert_eq!(edit_line("x=1\ny\nx=2\n", "", Some(&re), false), "y\n");
    }

    #[test]
    fn block_is_replaced_in_place() {
        let m = "# {mark} steward";
        let t = edit_block(
            "a\n# BEGIN steward\nold\n# END steward\nz\n",
            "new\nlines\n",
            m,
            true,
        );
        assert_eq!(t, "a\n# BEGIN steward\nnew\nlines\n# END steward\nz\n");
        assert_eq!(edit_block(&t, "", m, false), "a\nz\n");
    }

    proptest! {
        #[test]
        fn line_edits_are_idempotent(
            text in "([a-z =#]{0,8}\n){0,6}",
            line in "[a-z =]{1,8}",
            re in prop::option::of("[a-z]{1,2}"),
            present in any::<bool>(),
        ) {
            let re = re.map(|r| Regex::new(&format!("^{r}")).unwrap());
            let once = edit_line(&text, &line, re.as_ref(), present);
            let twice = edit_line(&once, &line, re.as_ref(), present);
            prop_assert_eq!(&once, &twice);
            if present {
                prop_assert!(once.lines().any(|l| l == line));
            }
        }

        #[test]
        fn block_edits_are_idempotent(
            text in "([a-z #]{0,8}\n){0,6}",
            block in "([a-z]{0,5}\n){0,3}",
            present in any::<bool>(),
        ) {
            let m = "# {mark} steward";
            let once = edit_block(&text, &block, m, present);
            prop_assert_eq!(&edit_block(&once, &block, m, present), &once);
        }
    }
}
