//! "Did you mean …?" for misspelt keywords, with BuildKit's rule: the closest option by edit distance,
//! only if at most two edits away, written in the same case as the user's word.

/// Options are lower case; the first of equally close options wins.
pub(super) fn closest(word: &str, options: &[&str]) -> Option<String> {
    let lowered = word.to_lowercase();
    let length = lowered.chars().count();
    let mut best: Option<(&str, usize)> = None;
    for &option in options {
        // Length alone rules most options out, and keeps absurdly long words cheap.
        if length.abs_diff(option.len()) > MAX_DISTANCE {
            continue;
        }
        let distance = edit_distance(&lowered, option);
        if distance <= MAX_DISTANCE && best.is_none_or(|(_, shortest)| distance < shortest) {
            best = Some((option, distance));
        }
    }
    let (option, _) = best?;
    Some(match word == word.to_uppercase() && word != lowered {
        true => option.to_uppercase(),
        false => option.to_owned(),
    })
}

const MAX_DISTANCE: usize = 2;

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}
