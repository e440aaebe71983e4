//! Filling an exec's command template, with Go's `fmt.Sprintf` semantics for `%s` templates, so a
//! Reflow-compiled `Cmd` renders exactly as it does under Reflow: `%s` takes the next argument,
//! `%%` is a literal percent, a missing argument renders `%!s(MISSING)`, surplus arguments are
//! appended as `%!(EXTRA string=a, string=b)`, another verb renders `%!v(string=arg)`, and a
//! trailing lone `%` renders `%!(NOVERB)`.

/// Formats `template` with `args` as Go's `fmt.Sprintf(template, args...)` would for string args.
pub fn format(template: &str, args: &[String]) -> String {
    let mut out =
        String::with_capacity(template.len() + args.iter().map(String::len).sum::<usize>());
    let mut next = 0;
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => out.push_str("%!(NOVERB)"),
            Some('%') => out.push('%'),
            Some(verb) => match args.get(next) {
                Some(a) => {
                    next += 1;
                    if verb == 's' || verb == 'v' {
                        out.push_str(a);
                    } else {
                        out.push_str(&format!("%!{verb}(string={a})"));
                    }
                }
                None => out.push_str(&format!("%!{verb}(MISSING)")),
            },
        }
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..].iter().map(|a| format!("string={a}")).collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::format;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn go_semantics_table() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("echo hi > $out", &[], "echo hi > $out"),
            (
                "cat %s > %s",
                &["/arg/0/0", "/return/0"],
                "cat /arg/0/0 > /return/0",
            ),
            (
                "printf '100%%' > %s",
                &["/return/0"],
                "printf '100%' > /return/0",
            ),
            ("cat %s %s", &["/arg/0/0"], "cat /arg/0/0 %!s(MISSING)"),
            (
                "cat %s",
                &["a", "b", "c"],
                "cat a%!(EXTRA string=b, string=c)",
            ),
            ("x %d", &["a"], "x %!d(string=a)"),
            ("trailing %", &[], "trailing %!(NOVERB)"),
            ("unicode é %s ü", &["ß"], "unicode é ß ü"),
            ("%s%s", &["/arg/0/0 /arg/0/1", ""], "/arg/0/0 /arg/0/1"),
        ];
        for (tmpl, args, want) in cases {
            assert_eq!(format(tmpl, &s(args)), *want, "{tmpl:?}");
        }
    }
}
