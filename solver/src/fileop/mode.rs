//! `COPY --chmod`: an octal mode, or a symbolic one as fsutil parses it (a port of BSD `setmode` with a zero
//! umask), applied to every copied file and directory.

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Chmod {
    /// Replaces the permission bits, set-id and sticky bits included.
    Octal(u32),
    Symbolic(Vec<Clause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Clause {
    /// Bits of `u`, `g`, `o` named before the operators; empty means all of them.
    who: Who,
    actions: Vec<(Op, Perm)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Who {
    user: bool,
    group: bool,
    other: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Set,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Perm {
    /// Any of r, w, x, X, s, t.
    Bits {
        read: bool,
        write: bool,
        exec: bool,
        cond_exec: bool,
        setid: bool,
        sticky: bool,
    },
    /// `g=u` and the like: the permissions of one class copied.
    Copy(u32),
}

impl Chmod {
    pub fn parse(text: &str) -> Result<Chmod, String> {
        if text.is_empty() {
            return Err("empty mode".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(text, 8) {
                Ok(mode) if mode <= 0o7777 => Ok(Chmod::Octal(mode)),
                _ => Err("octal modes are at most 7777 and use digits 0-7".into()),
            };
        }
        text.split(',')
            .map(parse_clause)
            .collect::<Result<_, _>>()
            .map(Chmod::Symbolic)
    }

    /// The new permission bits (`0o7777` range) of an entry whose current ones are `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => clauses.iter().fold(mode & 0o7777, |m, c| c.apply(m, is_dir)),
        }
    }
}

fn parse_clause(clause: &str) -> Result<Clause, String> {
    let bad = || format!("invalid symbolic mode clause {clause:?}");
    let mut who = Who::default();
    let mut chars = clause.chars().peekable();
    while let Some(c) = chars.next_if(|c| "ugoa".contains(*c)) {
        match c {
            'u' => who.user = true,
            'g' => who.group = true,
            'o' => who.other = true,
            _ => (who.user, who.group, who.other) = (true, true, true),
        }
    }
    let mut actions = Vec::new();
    while let Some(op) = chars.next() {
        let op = match op {
            '+' => Op::Add,
            '-' => Op::Remove,
            '=' => Op::Set,
            _ => return Err(bad()),
        };
        let perm = match chars.peek() {
            Some(&class @ ('u' | 'g' | 'o')) => {
                chars.next();
                Perm::Copy(match class {
                    'u' => 6,
                    'g' => 3,
                    _ => 0,
                })
            }
            _ => {
                let (mut read, mut write, mut exec, mut cond_exec, mut setid, mut sticky) =
                    (false, false, false, false, false, false);
                while let Some(c) = chars.next_if(|c| "rwxXst".contains(*c)) {
                    match c {
                        'r' => read = true,
                        'w' => write = true,
                        'x' => exec = true,
                        'X' => cond_exec = true,
                        's' => setid = true,
                        _ => sticky = true,
                    }
                }
                Perm::Bits {
                    read,
                    write,
                    exec,
                    cond_exec,
                    setid,
                    sticky,
                }
            }
        };
        actions.push((op, perm));
    }
    if actions.is_empty() {
        return Err(bad());
    }
    Ok(Clause { who, actions })
}

impl Clause {
    fn apply(&self, mut mode: u32, is_dir: bool) -> u32 {
        let all = !(self.who.user || self.who.group || self.who.other);
        let mut mask = 0;
        if all || self.who.user {
            mask |= 0o4700;
        }
        if all || self.who.group {
            mask |= 0o2070;
        }
        if all || self.who.other {
            mask |= 0o0007;
        }
        // BSD setmode: `t` means something only with no class named, or with `u`/`g` among them.
        let sticky_ok = all || self.who.user || self.who.group;
        for &(op, perm) in &self.actions {
            let mut bits = match perm {
                Perm::Bits {
                    read,
                    write,
                    exec,
                    cond_exec,
                    setid,
                    sticky,
                } => {
                    let mut b = 0;
                    if read {
                        b |= 0o444;
                    }
                    if write {
                        b |= 0o222;
                    }
                    // X tests the mode as changed so far, as BSD's getmode does.
                    if exec || (cond_exec && (is_dir || mode & 0o111 != 0)) {
                        b |= 0o111;
                    }
                    if setid {
                        b |= 0o6000;
                    }
                    if sticky && sticky_ok {
                        b |= 0o1000;
                    }
                    b & (mask | 0o1000)
                }
                Perm::Copy(shift) => (((mode >> shift) & 0o7) * 0o111) & mask,
            };
            match op {
                Op::Add => mode |= bits,
                Op::Remove => mode &= !bits,
                Op::Set => {
                    let clear = if sticky_ok { mask | 0o1000 } else { mask };
                    bits &= clear;
                    mode = (mode & !clear) | bits;
                }
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(text: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(text)
            .map(|c| c.apply(mode, is_dir))
            .unwrap_or(u32::MAX)
    }

    #[test]
    fn octal() {
        assert_eq!(Chmod::parse("755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(Chmod::parse("0640"), Ok(Chmod::Octal(0o640)));
        assert_eq!(Chmod::parse("4755").map(|c| c.apply(0o644, false)), Ok(0o4755));
        assert!(Chmod::parse("789").is_err());
        assert!(Chmod::parse("17777").is_err());
        assert!(Chmod::parse("").is_err());
    }

    #[test]
    fn symbolic() {
        assert_eq!(sym("u+x", 0o644, false), 0o744);
        assert_eq!(sym("go-w", 0o666, false), 0o644);
        assert_eq!(sym("u+x,go-w", 0o666, false), 0o744);
        assert_eq!(sym("a=rX", 0o640, false), 0o444);
        assert_eq!(sym("a=rX", 0o740, false), 0o555);
        assert_eq!(sym("a=rX", 0o700, true), 0o555);
        assert_eq!(sym("+x", 0o600, false), 0o711);
        assert_eq!(sym("=r", 0o4777, false), 0o444);
        assert_eq!(sym("g=u", 0o750, false), 0o770);
        assert_eq!(sym("u+s", 0o755, false), 0o4755);
        assert_eq!(sym("g+s", 0o755, true), 0o2755);
        assert_eq!(sym("+t", 0o755, true), 0o1755);
        assert_eq!(sym("o+t", 0o755, true), 0o755);
        assert_eq!(sym("u+x-w", 0o644, false), 0o544);
        for bad in ["u", "x+r", "u+q", "a+x,", "u!x"] {
            assert!(Chmod::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
