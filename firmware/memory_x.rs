// The `memory.x` reading shared by the firmware's build.rs (flash/RAM budgets of a build) and `enigma flash`
// (image sizes against a board): one parser, `include!`d by both, since the firmware is its own workspace.

/// A memory region of a `memory.x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // the firmware's build.rs reads only lengths
pub struct Region {
    pub origin: u64,
    pub length: u64,
}

/// `NAME : ORIGIN = a, LENGTH = b` of a `memory.x`.
pub fn memory_region(memory_x: &str, name: &str) -> Option<Region> {
    for line in memory_x.lines() {
        let line = line.split("/*").next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = rest.trim_start();
        if !rest.starts_with(':') && !rest.starts_with('(') {
            continue;
        }
        let field = |key: &str| {
            let v = rest.split(key).nth(1)?.trim_start().strip_prefix('=')?;
            eval(v.split(',').next()?.trim())
        };
        return Some(Region {
            origin: field("ORIGIN")?,
            length: field("LENGTH")?,
        });
    }
    None
}

fn eval(expr: &str) -> Option<u64> {
    let mut total: i64 = 0;
    let mut sign = 1i64;
    for tok in expr
        .replace('+', " + ")
        .replace('-', " - ")
        .split_whitespace()
    {
        match tok {
            "+" => sign = 1,
            "-" => sign = -1,
            t => {
                let (num, mul) = match t.chars().last()? {
                    'K' | 'k' => (&t[..t.len() - 1], 1024),
                    'M' | 'm' => (&t[..t.len() - 1], 1024 * 1024),
                    _ => (t, 1),
                };
                let v = match num.strip_prefix("0x").or_else(|| num.strip_prefix("0X")) {
                    Some(h) => i64::from_str_radix(h, 16).ok()?,
                    None => num.parse::<i64>().ok()?,
                };
                total += sign * v * mul;
            }
        }
    }
    u64::try_from(total).ok()
}
