//! A model's Jinja chat template rendered as Hugging Face's `apply_chat_template` renders it: jinja2's
//! sandbox with `trim_blocks` and `lstrip_blocks`, Python's string methods (`strip`, `startswith`, ...),
//! and the names templates use (`messages`, `bos_token`, `eos_token`, `add_generation_prompt`,
//! `raise_exception`, `strftime_now`). `tests/families.rs` holds the output to jinja2's byte for byte.

use crate::{ChatError, ChatMessage};
use minijinja::{context, Environment, Error, ErrorKind};
use std::time::{SystemTime, UNIX_EPOCH};

/// The most instructions a render may run. A chat template comes with a downloaded model file: a hostile
/// or broken one (a loop over `range(10**9)`) fails here instead of holding a server's thread. A Llama 3
/// template over a 200-message conversation runs 4,008 (in 0.23 ms, measured).
const FUEL: u64 = 5_000_000;

/// How our `raise_exception` marks its error, so a template refusing a conversation (a role out of
/// order) is told apart from a template that is broken.
const RAISED: &str = "raise_exception: ";

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    strftime(secs, &format)
}

/// Renders `source` over `messages`. The text may hold special pieces (`<|im_start|>`, `<s>`), which
/// [`crate::ChatFormat`] turns into their ids.
pub fn render(
    source: &str,
    messages: &[ChatMessage],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, ChatError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_fuel(Some(FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    let template = env
        .template_from_str(source)
        .map_err(|e| ChatError::Template(format!("does not parse: {}", describe(&e))))?;
    template
        .render(context! {
            messages => messages,
            bos_token => bos_token,
            eos_token => eos_token,
            add_generation_prompt => add_generation_prompt,
        })
        .map_err(|e| match e.detail().and_then(|d| d.strip_prefix(RAISED)) {
            Some(why) => ChatError::Refused(why.to_string()),
            None => ChatError::Template(format!("failed: {}", describe(&e))),
        })
}

/// The error and where in the template it happened, on one line.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Days since 1970-01-01 as (year, month 1-12, day 1-31): Howard Hinnant's `civil_from_days`.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// `secs` (UTC) formatted as Python's `strftime` formats the codes templates use (Llama 3.1's
/// `strftime_now("%d %b %Y")`); another code is written as it stands.
pub fn strftime(secs: u64, format: &str) -> String {
    let days = (secs / 86_400) as i64;
    let (year, month, day) = civil(days);
    let rem = secs % 86_400;
    let month_name = MONTHS[(month - 1) as usize];
    let day_name = DAYS[(days % 7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('b') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('A') => out.push_str(day_name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_writes_the_codes_templates_use() {
        // 2024-07-23 14:05:09 UTC, a Tuesday.
        let t = 1_721_743_509;
        assert_eq!(strftime(t, "%d %b %Y"), "23 Jul 2024");
        assert_eq!(
            strftime(t, "%A %B %e, %y %H:%M:%S %% %q"),
            "Tuesday July 23, 24 14:05:09 % %q"
        );
        assert_eq!(strftime(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        // A leap day.
        assert_eq!(strftime(951_782_400, "%Y-%m-%d"), "2000-02-29");
    }

    #[test]
    fn a_broken_template_is_an_error_that_says_where() {
        let m = [ChatMessage::user("hi")];
        let e = render("{% for m in messages %}", &m, "", "", true).unwrap_err();
        assert!(matches!(e, ChatError::Template(_)), "{e}");
        assert!(e.to_string().contains("does not parse"), "{e}");
        let e = render("{{ messages[0].content + 1 }}", &m, "", "", true).unwrap_err();
        assert!(matches!(e, ChatError::Template(_)), "{e}");
    }

    #[test]
    fn a_template_that_runs_away_runs_out_of_fuel() {
        let m = [ChatMessage::user("hi")];
        let src =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render(src, &m, "", "", true).unwrap_err();
        assert!(matches!(e, ChatError::Template(_)), "{e}");
    }

    #[test]
    fn raise_exception_refuses_the_conversation() {
        let m = [ChatMessage::assistant("hi")];
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}";
        match render(src, &m, "", "", true) {
            Err(ChatError::Refused(why)) => {
                assert_eq!(why, "Conversations must start with the user")
            }
            other => panic!("{other:?}"),
        }
    }
}
