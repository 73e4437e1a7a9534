//! Thousands of random and mutated programs through the parser and the
//! checker: every one must come back as `Ok` or a located error, never a
//! panic.

use nnc_dsl::SourceFile;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "layer",
    "model",
    "data",
    "train",
    "on",
    "param",
    "input",
    "output",
    "return",
    "let",
    "x",
    "y",
    "B",
    "dense",
    "relu",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "->",
    "+",
    "-",
    "*",
    "/",
    "...",
    "f32",
    "i32",
    "int",
    "1",
    "0",
    "-1",
    "1e-3",
    "\"p\"",
    "\n",
    " ",
    "sum",
    "axis",
    "reshape",
    "matmul",
    "softmax",
    "cross_entropy",
    "mean",
    "split(0.5)",
    "adam",
    "loss",
    "...s",
    "[B, 4]",
];

fn check(text: &str) {
    let src = SourceFile::new("fuzz.nn", text);
    if let Err(e) = nnc_dsl::compile(&src, None) {
        // Every error must be renderable against the source.
        let rendered = nnc::diagnostic::render(&src, &e);
        assert!(rendered.starts_with("error: "));
    }
}

fn seeds() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<String> = ["xor", "digits_mlp", "mnist_mlp"]
        .iter()
        .map(|n| std::fs::read_to_string(root.join(format!("examples/{n}.nn"))).unwrap())
        .collect();
    texts.push(
        nnc_dsl::PRELUDE.to_string()
            + "\nmodel M { input x: f32[B, 8] y = x -> dense(4) -> softmax output y }",
    );
    texts
}

#[test]
fn random_token_soup_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        let n = rng.below(60);
        let text: Vec<&str> = (0..n).map(|_| TOKENS[rng.below(TOKENS.len())]).collect();
        check(&text.join(" "));
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..1000 {
        let n = rng.below(200);
        let bytes: Vec<u8> = (0..n).map(|_| (rng.next() & 0x7F) as u8).collect();
        check(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn mutated_examples_never_panic() {
    let mut rng = Rng(7);
    let seeds = seeds();
    for i in 0..3000 {
        let mut text: Vec<char> = seeds[i % seeds.len()].chars().collect();
        for _ in 0..1 + rng.below(3) {
            let len = text.len();
            let at = rng.below(len);
            let span = 1 + rng.below(12);
            match rng.below(4) {
                0 => {
                    text.drain(at..(at + span).min(len));
                }
                1 => {
                    let piece: Vec<char> = text[at..(at + span).min(len)].to_vec();
                    let to = rng.below(text.len());
                    text.splice(to..to, piece);
                }
                2 => {
                    let tok: Vec<char> = TOKENS[rng.below(TOKENS.len())].chars().collect();
                    text.splice(at..at, tok);
                }
                _ => {
                    // Swap a digit or a name for another: reaches the checker.
                    let tok: Vec<char> = ["7", "0", "1000000", "x", "label", "i32", "f64"]
                        [rng.below(7)]
                    .chars()
                    .collect();
                    let end = (at + 1).min(len);
                    text.splice(at..end, tok);
                }
            }
        }
        check(&text.into_iter().collect::<String>());
    }
}
