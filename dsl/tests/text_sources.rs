//! Lowering of the text sources of data blocks (`text`, `text_labels`) to
//! `nnc_ir`, and the errors for wrong arguments. Nothing here reads files:
//! the runtime does that.

use nnc_dsl::{compile, Error, SourceFile};
use nnc_ir::{DType, DataSpec, Source, TestSet, TextColumn, TextFormat};

/// A program whose model takes `i32[B, 8]` token ids and whose data block
/// is `data` (the text inside `data D { ... }`).
fn program(data: &str) -> String {
    format!(
        "model M {{\n    input tokens: i32[B, 8]\n    \
         logits = float(tokens) -> dense(3)\n    output logits\n}}\n\
         data D {{\n{data}\n}}\n\
         train M on D {{\n    loss = cross_entropy(logits, label)\n    optimizer = adam\n}}\n"
    )
}

fn lower(data: &str) -> DataSpec {
    match compile(&SourceFile::new("t.nn", program(data)), None) {
        Ok(module) => module.data.expect("a data block"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The error and the source text its span covers.
fn error(data: &str) -> (Error, String) {
    let text = program(data);
    let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
    let covered = text[err.span.start..err.span.end].to_string();
    (err, covered)
}

const LABELS: &str = "\n    label: i32 = text_labels(\"r8.tab\", column: \"Category\")";

#[test]
fn text_sources_lower_with_their_options_and_defaults() {
    let data = lower(
        r#"    tokens: i32 = text("text/r8-train.tab", column: "Text", length: 8, min_count: 2, max_size: 20000, ngrams: 2)
    label: i32 = text_labels("text/r8-train.tab", column: "Category")
    test {
        tokens: i32 = text("text/r8-test.tab.gz", column: 1, length: 8)
        label: i32 = text_labels("text/r8-test.tab.gz", column: 0)
    }"#,
    );
    assert_eq!(
        data.fields[0].source,
        Source::Text {
            path: "text/r8-train.tab".into(),
            format: TextFormat::Tab,
            column: TextColumn::Name("Text".into()),
            length: 8,
            min_count: Some(2),
            max_size: Some(20000),
            ngrams: Some(2),
        }
    );
    assert_eq!(data.fields[0].dtype, DType::I32);
    assert_eq!(
        data.fields[1].source,
        Source::TextLabels {
            path: "text/r8-train.tab".into(),
            format: TextFormat::Tab,
            column: TextColumn::Name("Category".into()),
        }
    );
    let Some(TestSet::Fields(test)) = &data.test else {
        panic!("expected test fields, got {:?}", data.test);
    };
    // Options not written stay unwritten: the test set takes the training
    // field's vocabulary.
    assert_eq!(
        test[0].source,
        Source::Text {
            path: "text/r8-test.tab.gz".into(),
            format: TextFormat::Tab,
            column: TextColumn::Index(1),
            length: 8,
            min_count: None,
            max_size: None,
            ngrams: None,
        }
    );
    assert_eq!(
        test[1].source,
        Source::TextLabels {
            path: "text/r8-test.tab.gz".into(),
            format: TextFormat::Tab,
            column: TextColumn::Index(0),
        }
    );

    // The format follows the extension, or the `format` argument.
    let data = lower(
        r#"    tokens: i32 = text("reviews.csv", column: "review", length: 8)
    label: i32 = text_labels("reviews.txt", column: "stars", format: "tsv")"#,
    );
    let Source::Text { format, .. } = &data.fields[0].source else {
        panic!("{:?}", data.fields[0].source);
    };
    assert_eq!(*format, TextFormat::Csv);
    let Source::TextLabels { format, .. } = &data.fields[1].source else {
        panic!("{:?}", data.fields[1].source);
    };
    assert_eq!(*format, TextFormat::Tsv);
}

#[test]
fn bad_text_arguments_point_at_the_argument() {
    let tokens = |args: &str| format!("    tokens: i32 = text(\"r8.tab\", {args}){LABELS}");

    let (e, at) = error(&tokens("column: \"Text\""));
    assert_eq!(e.message, "`text` needs `length`, the tokens per sample");
    assert_eq!(at, "text");

    let (e, at) = error(&tokens("length: 8"));
    assert_eq!(e.message, "`text` needs the column to read");
    assert!(e.help.as_deref().unwrap_or("").contains("0-based index"));
    assert_eq!(at, "text");

    let (e, at) = error(&tokens("column: \"Text\", length: 0"));
    assert_eq!(e.message, "`length` takes an int from 1 to 1048576");
    assert_eq!(e.label.as_deref(), Some("found int 0"));
    assert_eq!(at, "0");

    let (e, at) = error(&tokens("column: \"Text\", length: 8, max_size: 2"));
    assert_eq!(
        e.message,
        "`max_size` takes an int from 3 to 2147483647 (ids 0 and 1 are padding and unknown, so 3 holds one word)"
    );
    assert_eq!(at, "2");

    let (e, at) = error(&tokens("column: \"Text\", length: 8, min_count: 0"));
    assert_eq!(e.message, "`min_count` takes an int from 1 to 2147483647");
    assert_eq!(at, "0");

    let (e, at) = error(&tokens("column: \"Text\", length: 8, ngrams: 1.5"));
    assert_eq!(e.message, "`ngrams` takes an int from 1 to 8");
    assert_eq!(e.label.as_deref(), Some("found float 1.5"));
    assert_eq!(at, "1.5");

    let (e, at) = error(&tokens("column: -1, length: 8"));
    assert_eq!(
        e.message,
        "`column` takes a header name or a 0-based index, found int -1"
    );
    assert_eq!(at, "-1");

    let (e, at) = error(&tokens("column: \"Text\", length: 8, lowercase: true"));
    assert_eq!(e.message, "`text` has no parameter `lowercase`");
    assert_eq!(at, "lowercase");

    let (e, at) = error(&tokens("column: \"Text\", length: 8, format: \"json\""));
    assert_eq!(e.message, "unknown text format \"json\"");
    assert_eq!(at, "\"json\"");

    let (e, at) = error(&format!(
        "    tokens: i32 = text(\"r8.txt\", column: \"Text\", length: 8){LABELS}"
    ));
    assert_eq!(
        e.message,
        "cannot tell how `r8.txt` is laid out from its extension"
    );
    assert!(e.help.as_deref().unwrap_or("").contains("format: \"tab\""));
    assert_eq!(at, "\"r8.txt\"");

    let (e, at) = error(&format!(
        "    tokens: i32 = text(column: \"Text\", length: 8){LABELS}"
    ));
    assert_eq!(e.message, "`text` needs a file path");
    assert_eq!(at, "text");

    let (e, at) = error(
        "    tokens: i32 = text(\"r8.tab\", column: \"Text\", length: 8)\n    label: i32 = text_labels(\"r8.tab\")",
    );
    assert_eq!(e.message, "`text_labels` needs the column to read");
    assert_eq!(at, "text_labels");

    let (e, at) = error(
        "    tokens: i32 = text(\"r8.tab\", column: \"Text\", length: 8)\n    label: i32 = text_labels(\"r8.tab\", column: \"C\", length: 8)",
    );
    assert_eq!(e.message, "`text_labels` has no parameter `length`");
    assert_eq!(at, "length");

    // Token ids are integers: a float field would round them.
    let (e, at) = error(&format!(
        "    tokens = text(\"r8.tab\", column: \"Text\", length: 8){LABELS}"
    ));
    assert_eq!(
        e.message,
        "data field `tokens` holds token ids, which are i32"
    );
    assert_eq!(
        e.help.as_deref(),
        Some("declare it `tokens: i32 = text(...)`")
    );
    assert!(at.starts_with("tokens = text("), "{at}");

    let (e, at) = error(&format!(
        "    tokens: i32 = txt(\"r8.tab\", column: \"Text\", length: 8){LABELS}"
    ));
    assert_eq!(e.message, "unknown data source `txt`");
    assert!(e.help.as_deref().unwrap_or("").contains("text"), "{e:?}");
    assert_eq!(at, "txt");
}
