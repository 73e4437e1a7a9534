//! Text data end to end: a bag-of-words model written with builtins trains
//! on a small generated `.tab` table, its checkpoint carries the vocabulary
//! and the class names, and `--predict` on raw text (one per line, or a
//! table) encodes it the same way and names the classes. Bad setups stop
//! with messages naming the file and line.

use nnc::driver::{self, RunSettings};
use nnc_runtime::data::text::FieldVocabulary;
use nnc_runtime::{RunOptions, RunOutcome};
use std::path::Path;
use std::process::Command;

mod common;
use common::Scratch;

const SPORT: [&str; 6] = ["match", "goal", "team", "coach", "league", "score"];
const MONEY: [&str; 6] = ["shares", "profit", "bank", "market", "dividend", "stock"];

/// An Orange table of `n` texts alternating between the two topics, each
/// a few of its topic's words plus a shared filler word.
fn table(n: usize, offset: usize) -> String {
    let mut text = String::from("Category\tText\nd\tstring\nclass\t\n\n");
    for i in 0..n {
        let (class, words) = if i % 2 == 0 {
            ("sport", SPORT)
        } else {
            ("money", MONEY)
        };
        let k = i + offset;
        let picked: Vec<&str> = (0..3).map(|j| words[(k + j) % 6]).collect();
        text.push_str(&format!(
            "{class}\tThe {}, {}; {}!\n",
            picked[0], picked[1], picked[2]
        ));
    }
    text
}

/// The model and data block over `train.tab` and `test.tab`; `data_extra`
/// goes into the training `text` source's arguments.
fn program(data_extra: &str, test_extra: &str) -> String {
    format!(
        r#"
layer bag(tokens: i32[b, n], vocab: int, dim: int) {{
    param table: f32[vocab, dim] = normal(0, 0.1)
    let mask = float(greater(tokens, 0))
    let total = sum(take(table, tokens, axis: 0) * reshape(mask, [b, n, 1]), axis: 1)
    return total / maximum(sum(mask, axis: 1, keepdim: true), 1)
}}
model Bow {{
    input tokens: i32[B, 6]
    logits = bag(tokens, 16, 8) -> dense(2)
    output logits
}}
data Texts {{
    tokens: i32 = text("train.tab", column: "Text", length: 6{data_extra})
    label: i32 = text_labels("train.tab", column: "Category")
    test {{
        tokens: i32 = text("test.tab", column: 1, length: 6{test_extra})
        label: i32 = text_labels("test.tab", column: "Category")
    }}
}}
train Bow on Texts {{
    loss = cross_entropy(logits, label)
    optimizer = adam(lr: 0.1)
    batch = 8
    epochs = 15
    seed = 3
    metrics = [accuracy]
}}
"#
    )
}

fn run(path: &Path, options: RunOptions) -> Result<(RunOutcome, Vec<String>), String> {
    let settings = RunSettings {
        run: options,
        ..Default::default()
    };
    let mut lines = Vec::new();
    let outcome =
        driver::run_with(path, &settings, &mut |l| lines.push(l.to_string())).map_err(|f| f.0)?;
    Ok((outcome, lines))
}

#[test]
fn a_bag_of_words_model_trains_saves_its_vocabulary_and_predicts_raw_text() {
    let dir = Scratch::new("e2e");
    dir.write("train.tab", &table(40, 0));
    dir.write("test.tab", &table(10, 1));
    let model = dir.write("bow.nn", &program("", ""));
    let ckpt = dir.0.join("bow.safetensors");
    let (outcome, _) = run(
        &model,
        RunOptions {
            save: Some(ckpt.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let RunOutcome::Trained(report) = outcome else {
        panic!("expected training");
    };
    let test = report.test.expect("a test set");
    assert_eq!(test.samples, 10);
    assert_eq!(test.accuracy, Some(1.0), "the topics share no word");

    let saved = nnc_runtime::checkpoint::load(&ckpt).unwrap();
    let Some(FieldVocabulary::Tokens(vocab)) = saved.vocabularies.get("tokens") else {
        panic!("{:?}", saved.vocabularies);
    };
    // "the" is in every text: the most frequent word gets the first id.
    assert_eq!(vocab.words[0], "the");
    assert_eq!(vocab.size(), 15);
    let Some(FieldVocabulary::Classes(classes)) = saved.vocabularies.get("label") else {
        panic!("{:?}", saved.vocabularies);
    };
    assert_eq!(classes.names, ["money", "sport"]);

    // Raw text, one per line, through the binary: class names printed.
    let texts = dir.write(
        "texts.txt",
        "Coach and TEAM score a goal\n\nbank shares fall\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nnc"))
        .arg("run")
        .arg(&model)
        .arg("--weights")
        .arg(&ckpt)
        .arg("--predict")
        .arg(&texts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("0: [") && lines[0].ends_with("class 1 (sport)"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("1: [") && lines[1].ends_with("class 0 (money)"),
        "{stdout}"
    );

    // A table: the training field's column, by name; a CSV with the names.
    let tsv = dir.write(
        "texts.tsv",
        "Text\tid\nstock market profit\t7\nleague match\t8\n",
    );
    let out_csv = dir.0.join("predicted.csv");
    let (outcome, _) = run(
        &model,
        RunOptions {
            weights: Some(ckpt.clone()),
            predict: Some(tsv),
            predict_out: Some(out_csv.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let RunOutcome::Predicted(predictions) = outcome else {
        panic!("expected predictions");
    };
    let names: Vec<Option<&str>> = predictions
        .iter()
        .map(|p| p.class_name.as_deref())
        .collect();
    assert_eq!(names, [Some("money"), Some("sport")]);
    let written = std::fs::read_to_string(&out_csv).unwrap();
    assert!(
        written.starts_with("logits_0,logits_1,class,class_name\n"),
        "{written}"
    );
    assert!(
        written.ends_with(",0,money\n") || written.contains(",0,money\n"),
        "{written}"
    );

    // Evaluating the weights on data whose vocabulary changed is refused.
    let changed = dir.write("changed.nn", &program(", min_count: 3", ""));
    let err = run(
        &changed,
        RunOptions {
            weights: Some(ckpt.clone()),
            eval: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.contains("was trained with another vocabulary for the text field `tokens`"),
        "{err}"
    );

    // A line with no word to predict from names its line.
    let blank = dir.write("blank.txt", "goal\n?!\n");
    let err = run(
        &model,
        RunOptions {
            weights: Some(ckpt),
            predict: Some(blank.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        err.contains(&format!(
            "{}:2: the text in column 0 is empty: it has no letter or digit",
            blank.display()
        )),
        "{err}"
    );
}

#[test]
fn bad_text_data_stops_the_run_naming_file_and_line() {
    let dir = Scratch::new("bad");
    dir.write("train.tab", &table(8, 0));
    let model = dir.write("bow.nn", &program("", ""));

    // A test class the training samples lack.
    let test = dir.write("test.tab", &(table(4, 0) + "politics\tvote\n"));
    let err = run(&model, RunOptions::default()).unwrap_err();
    assert!(
        err.contains(&format!(
            "{}:9: class `politics` is not among the classes of the training samples (2: `money`, `sport`)",
            test.display()
        )),
        "{err}"
    );

    // A test field that asks for another vocabulary than training built.
    dir.write("test.tab", &table(4, 0));
    let other = dir.write("other.nn", &program("", ", ngrams: 2"));
    let err = run(&other, RunOptions::default()).unwrap_err();
    assert!(
        err.contains(
            "field `tokens` gives its own `ngrams`, but its vocabulary was built from the training samples with ngrams 1"
        ),
        "{err}"
    );

    // Not UTF-8.
    let mut bytes = table(4, 0).into_bytes();
    bytes.extend_from_slice(b"sport\tgoal \xff\n");
    std::fs::write(dir.0.join("test.tab"), bytes).unwrap();
    let err = run(&model, RunOptions::default()).unwrap_err();
    assert!(err.contains("test.tab:9:12: not valid UTF-8"), "{err}");

    // A column the header does not name.
    dir.write("test.tab", &table(4, 0));
    let renamed = dir.write(
        "renamed.nn",
        &program("", "").replace("\"Category\")\n    test", "\"Class\")\n    test"),
    );
    let err = run(&renamed, RunOptions::default()).unwrap_err();
    assert!(
        err.contains("train.tab: no column `Class`; the header names: Category, Text"),
        "{err}"
    );
}

/// `examples/reuters_bow.nn` compiles, and on the shipped data (when
/// `../shared/data/text` exists) its vocabulary fits its embedding table.
#[test]
fn the_reuters_example_compiles_and_its_vocabulary_fits_the_model() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("examples/reuters_bow.nn");
    let src = driver::read_source(&path).unwrap();
    let module = driver::compile_source(&src, None).unwrap();
    let data_dir = root.join("../shared/data");
    if !data_dir.join("text/reuters-r8-train.tab").exists() {
        println!(
            "skipping the data check: {} not found",
            data_dir.join("text").display()
        );
        return;
    }
    let spec = module.data.as_ref().unwrap();
    let holdout = nnc_runtime::loader::Holdout::Split {
        validate: None,
        seed: 7,
    };
    let data = nnc_runtime::loader::load_training(spec, &data_dir, holdout).unwrap();
    assert_eq!(data.train.len(), 5485);
    assert_eq!(data.test.as_ref().map(|t| t.len()), Some(2189));
    let Some(FieldVocabulary::Tokens(vocab)) = data.vocabularies.get("tokens") else {
        panic!("{:?}", data.vocabularies.keys());
    };
    assert!(vocab.size() <= 20_000, "{} ids", vocab.size());
    let Some(FieldVocabulary::Classes(classes)) = data.vocabularies.get("label") else {
        panic!("{:?}", data.vocabularies.keys());
    };
    assert_eq!(
        classes.names,
        ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
    );
}
