use super::*;
use crate::data::testutil::{gzip, shared_data, TempDir};

const R8ISH: &str = "Category\tText\nd\tstring\nclass\t\n\n\
    earn\tShares rose; profit UP\n\
    acq\tcompany buys shares\n\
    earn\tprofit profit shares\n";

fn table(dir: &TempDir, name: &str, text: &str, format: TextFormat) -> TextTable {
    load_table(&dir.write(name, text.as_bytes()), format).unwrap()
}

fn tokens(text: &str, ngrams: usize) -> Vec<String> {
    let mut out = Vec::new();
    tokenize(text, ngrams, &mut out);
    out
}

fn options(min_count: usize, max_size: Option<usize>) -> VocabularyOptions {
    VocabularyOptions {
        min_count,
        max_size,
        ngrams: 1,
    }
}

fn name(n: &str) -> TextColumn {
    TextColumn::Name(n.into())
}

#[test]
fn the_tokenizer_lowercases_splits_on_non_alphanumerics_and_adds_ngrams() {
    assert_eq!(
        tokens("Hello, World! 42x--y", 1),
        ["hello", "world", "42x", "y"]
    );
    assert_eq!(tokens("Größe ÉTÉ", 1), ["größe", "été"]);
    assert_eq!(tokens("  ...  ", 1), [] as [&str; 0]);
    assert_eq!(
        tokens("a b c", 2),
        ["a", "b", "c", "a_b", "b_c"],
        "bigrams follow the words, fastText style"
    );
    assert_eq!(tokens("a b c", 3), ["a", "b", "c", "a_b", "b_c", "a_b_c"]);
    assert_eq!(tokens("one", 3), ["one"]);
}

#[test]
fn orange_tables_load_plain_or_gzipped_with_columns_by_name_or_index() {
    let dir = TempDir::new("text-tab");
    let plain = table(&dir, "r.tab", R8ISH, TextFormat::Tab);
    let packed = load_table(
        &dir.write("r.tab.gz", &gzip(R8ISH.as_bytes())),
        TextFormat::Tab,
    )
    .unwrap();
    for t in [&plain, &packed] {
        assert_eq!(t.rows(), 3);
        assert_eq!(t.header(), ["Category", "Text"]);
        assert_eq!(t.column(&name("Text")).unwrap(), 1);
        assert_eq!(t.column(&TextColumn::Index(0)).unwrap(), 0);
        // Lines are the file's: the header's three, the empty fourth.
        assert_eq!(t.rows[0].line, 5);
    }
    let err = plain.column(&name("text")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no column `text`; the header names: Category, Text",
            plain.path().display()
        )
    );
    let err = plain.column(&TextColumn::Index(2)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("column 2 is out of bounds for a table of 2 columns (0-based)"),
        "{err}"
    );

    // CSV: one header line, quoted fields with commas and doubled quotes.
    let csv = table(
        &dir,
        "r.csv",
        "label,review\r\npos,\"good, \"\"really\"\" good\"\nneg,bad\n",
        TextFormat::Csv,
    );
    assert_eq!(csv.rows(), 2);
    assert_eq!(csv.rows[0].cells, ["pos", "good, \"really\" good"]);
    // One text per line, no header.
    let lines = table(&dir, "p.txt", "first text\n\nsecond\n", TextFormat::Lines);
    assert_eq!(lines.rows(), 2);
    assert_eq!(lines.rows[1].line, 3);
}

#[test]
fn the_vocabulary_counts_training_samples_only_and_encodes_to_a_fixed_length() {
    let dir = TempDir::new("text-vocab");
    let t = table(&dir, "r.tab", R8ISH, TextFormat::Tab);
    let tok = tokenize_column(&t, 1, 1).unwrap();
    let all = [0, 1, 2];
    let v = Vocabulary::build(&tok, &all, options(1, None), t.path(), &name("Text")).unwrap();
    // profit 3, shares 3 (tie: by the word), then the ones, by the word.
    assert_eq!(
        v.words,
        ["profit", "shares", "buys", "company", "rose", "up"]
    );
    assert_eq!(v.size(), 8);
    assert_eq!(
        v.encode(&tok, 4),
        [
            3, 6, 2, 7, // shares rose profit up
            5, 4, 3, 0, // company buys shares, padded
            2, 2, 3, 0,
        ]
    );
    // Truncation keeps the first tokens.
    assert_eq!(&v.encode(&tok, 2)[..2], [3, 6]);

    let v = Vocabulary::build(&tok, &all, options(2, None), t.path(), &name("Text")).unwrap();
    assert_eq!(v.words, ["profit", "shares"]);
    assert_eq!(
        &v.encode(&tok, 4)[..4],
        [3, 1, 2, 1],
        "rare words are unknown"
    );
    let v = Vocabulary::build(&tok, &all, options(1, Some(3)), t.path(), &name("Text")).unwrap();
    assert_eq!(v.words, ["profit"], "max_size counts the two reserved ids");

    // Only the training samples count: sample 1 alone.
    let v = Vocabulary::build(&tok, &[1], options(1, None), t.path(), &name("Text")).unwrap();
    assert_eq!(v.words, ["buys", "company", "shares"]);
    assert_eq!(&v.encode(&tok, 4)[..4], [4, 1, 1, 1]);

    // Another file's samples take this vocabulary; their unseen words are unknown.
    let test = table(
        &dir,
        "t.tab",
        "C\tT\n\n\nacq\tshares of newco\n",
        TextFormat::Tab,
    );
    let test_tok = tokenize_column(&test, 1, 1).unwrap();
    assert_eq!(v.encode(&test_tok, 3), [4, 1, 1]);

    let bigrams = tokenize_column(&t, 1, 2).unwrap();
    let o = VocabularyOptions {
        ngrams: 2,
        ..options(2, None)
    };
    let v = Vocabulary::build(&bigrams, &all, o, t.path(), &name("Text")).unwrap();
    assert_eq!(v.words, ["profit", "shares"]);
    let v = Vocabulary::build(&bigrams, &[2], options(1, None), t.path(), &name("Text")).unwrap();
    assert_eq!(
        v.words,
        ["profit", "profit_profit", "profit_shares", "shares"]
    );
}

#[test]
fn class_names_are_sorted_from_the_training_samples() {
    let dir = TempDir::new("text-classes");
    let t = table(&dir, "r.tab", R8ISH, TextFormat::Tab);
    let classes = ClassNames::build(&t, 0, &[0, 1, 2]).unwrap();
    assert_eq!(classes.names, ["acq", "earn"]);
    assert_eq!(classes.encode(&t, 0).unwrap(), [1, 0, 1]);

    let test = table(
        &dir,
        "t.tab",
        "C\tT\n\n\nearn\tx\ncrude\toil\n",
        TextFormat::Tab,
    );
    let err = classes.encode(&test, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}:5: class `crude` is not among the classes of the training samples (2: `acq`, `earn`)",
            test.path().display()
        )
    );
    // Held out, a class the training rows lack is unknown too.
    let only_earn = ClassNames::build(&t, 0, &[0, 2]).unwrap();
    let err = only_earn.encode(&t, 0).unwrap_err();
    assert!(err.to_string().contains(":6: class `acq`"), "{err}");

    let many: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
    assert_eq!(
        list_names(&many),
        "12: `c00`, `c01`, `c02`, `c03`, `c04`, `c05`, `c06`, `c07`, `c08`, `c09`, and 2 more"
    );
}

/// The message of loading `text` as a `.tab` table and reading its texts
/// and classes, with the file's path replaced by `F`.
fn failure(text: &[u8], format: TextFormat) -> String {
    let dir = TempDir::new("text-bad");
    let path = dir.write("f", text);
    let result = load_table(&path, format).and_then(|t| {
        tokenize_column(&t, t.column(&TextColumn::Index(1))?, 1)?;
        let classes = ClassNames::build(&t, 0, &(0..t.rows()).collect::<Vec<_>>())?;
        classes.encode(&t, 0).map(|_| ())
    });
    result
        .unwrap_err()
        .to_string()
        .replace(&path.display().to_string(), "F")
}

#[test]
fn bad_input_is_an_error_naming_file_and_line() {
    let head = "C\tT\nd\tstring\nclass\t\n";
    let tab = TextFormat::Tab;
    assert_eq!(
        failure(format!("{head}earn\tfine\nacq\t\n").as_bytes(), tab),
        "F:5: the text in column `T` is empty: it has no letter or digit"
    );
    assert_eq!(
        failure(format!("{head}earn\t--- !!\n").as_bytes(), tab),
        "F:4: the text in column `T` is empty: it has no letter or digit"
    );
    let mut latin1 = format!("{head}earn\tok\nacq\tcaf").into_bytes();
    latin1.extend_from_slice(b"\xe9 noir\n");
    assert_eq!(
        failure(&latin1, tab),
        "F:5:8: not valid UTF-8 (text files must be UTF-8)"
    );
    assert_eq!(
        failure(format!("{head}earn\tok\tmore\n").as_bytes(), tab),
        "F:4: row has 3 cells, but the header names 2 columns"
    );
    assert_eq!(
        failure(format!("{head}only\n").as_bytes(), tab),
        "F:4: row has 1 cells, but the header names 2 columns"
    );
    assert_eq!(
        failure(format!("{head}\tno class\n").as_bytes(), tab),
        "F:4: the class name in column `C` is empty"
    );
    assert_eq!(
        failure(b"C\tT\nd\tstring\n", tab),
        "F: the file has 2 lines, but the `tab` layout starts with 3 header lines"
    );
    assert_eq!(
        failure(head.as_bytes(), tab),
        "F: no samples after the header"
    );
    assert_eq!(
        failure(b"c,t\na,\"unclosed, text\n", TextFormat::Csv),
        "F:2: a double quote opens a field that the line does not close"
    );
    assert_eq!(
        failure(b"", TextFormat::Csv),
        "F: the file has 0 lines, but the `csv` layout starts with 1 header lines"
    );

    // A vocabulary without a word.
    let dir = TempDir::new("text-empty-vocab");
    let t = table(&dir, "r.tab", R8ISH, tab);
    let tok = tokenize_column(&t, 1, 1).unwrap();
    let err =
        Vocabulary::build(&tok, &[0, 1, 2], options(4, None), t.path(), &name("Text")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the vocabulary of column `Text` is empty: no token occurs at least 4 times in the 3 training samples (lower `min_count`)",
            t.path().display()
        )
    );
}

/// The shipped datasets (when `../shared/data/text` exists): sample and
/// class counts, and that loading stays fast.
#[test]
fn the_shipped_text_datasets_load_with_their_counts() {
    // R8's training texts hold 19,982 distinct words: all of them fit.
    for (name, train_rows, test_rows, classes, vocabulary) in [
        ("reuters-r8", 5485, 2189, 8, 19_984),
        ("20newsgroups", 11293, 7528, 20, 20_000),
    ] {
        let ext = if name == "reuters-r8" {
            "tab"
        } else {
            "tab.gz"
        };
        let (Some(train), Some(test)) = (
            shared_data(&format!("text/{name}-train.{ext}")),
            shared_data(&format!("text/{name}-test.{ext}")),
        ) else {
            continue;
        };
        let started = std::time::Instant::now();
        let train = load_table(&train, TextFormat::Tab).unwrap();
        let test = load_table(&test, TextFormat::Tab).unwrap();
        assert_eq!(
            (train.rows(), test.rows()),
            (train_rows, test_rows),
            "{name}"
        );
        let text = train.column(&name_of("Text")).unwrap();
        let category = train.column(&name_of("Category")).unwrap();
        let all: Vec<usize> = (0..train.rows()).collect();
        let names = ClassNames::build(&train, category, &all).unwrap();
        assert_eq!(names.names.len(), classes, "{name}");
        let test_labels = names.encode(&test, category).unwrap();
        assert!(test_labels
            .iter()
            .all(|&c| (0..classes as i32).contains(&c)));
        let tok = tokenize_column(&train, text, 1).unwrap();
        let o = options(1, Some(20_000));
        let vocab = Vocabulary::build(&tok, &all, o, train.path(), &name_of("Text")).unwrap();
        assert_eq!(vocab.size(), vocabulary, "{name}");
        let ids = vocab.encode(&tokenize_column(&test, text, 1).unwrap(), 200);
        assert_eq!(ids.len(), test_rows * 200);
        println!(
            "{name}: loaded, tokenized and encoded in {:?}",
            started.elapsed()
        );
    }
}

fn name_of(n: &str) -> TextColumn {
    name(n)
}
