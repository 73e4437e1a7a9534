//! Lowering of the image sources of data blocks (`images`, `image_labels`,
//! `cifar`, `cifar_labels`) and per-channel `normalize` to `nnc_ir`, and
//! the errors for wrong arguments. Nothing here reads files: the runtime
//! does that.

use nnc_dsl::{compile, Error, SourceFile};
use nnc_ir::{DType, DataSpec, Source, TestSet, Transform};

/// A program whose model takes `f32[B, C, H, W]` images and whose data
/// block is `data` (the text inside `data D { ... }`).
fn program(shape: &str, data: &str) -> String {
    format!(
        "model M {{\n    input image: f32[B, {shape}]\n    \
         logits = reshape(image, [B, -1]) -> dense(10)\n    output logits\n}}\n\
         data D {{\n{data}\n}}\n\
         train M on D {{\n    loss = cross_entropy(logits, label)\n    optimizer = adam\n}}\n"
    )
}

/// The data block of the program; panics with the front-end error.
fn lower(shape: &str, data: &str) -> DataSpec {
    let text = program(shape, data);
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(module) => module.data.expect("a data block"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The error and the source text its span covers.
fn error(shape: &str, data: &str) -> (Error, String) {
    let text = program(shape, data);
    let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
    let covered = text[err.span.start..err.span.end].to_string();
    (err, covered)
}

#[test]
fn image_folder_sources_lower_with_their_options() {
    let data = lower(
        "1, 28, 28",
        r#"    image = images("pets.tar.gz/train", grayscale: true, size: [28, 28]) -> scale(1 / 255)
    label: i32 = image_labels("pets.tar.gz/train")
    test {
        image = images("pets.tar.gz/test", size: [28, 28], grayscale: true) -> scale(1 / 255)
        label: i32 = image_labels("pets.tar.gz/test")
    }"#,
    );
    assert_eq!(
        data.fields[0].source,
        Source::Images {
            path: "pets.tar.gz/train".into(),
            grayscale: true,
            size: Some([28, 28]),
        }
    );
    assert_eq!(data.fields[0].transforms, [Transform::Scale(1.0 / 255.0)]);
    assert_eq!(
        data.fields[1].source,
        Source::ImageLabels {
            path: "pets.tar.gz/train".into()
        }
    );
    assert_eq!(data.fields[1].dtype, DType::I32);
    let Some(TestSet::Fields(test)) = &data.test else {
        panic!("expected test fields, got {:?}", data.test);
    };
    assert_eq!(
        test[0].source,
        Source::Images {
            path: "pets.tar.gz/test".into(),
            grayscale: true,
            size: Some([28, 28]),
        }
    );

    // Defaults: RGB, no resizing.
    let data = lower(
        "3, 32, 32",
        r#"    image = images("cifar10/train")
    label: i32 = image_labels(path: "cifar10/train")"#,
    );
    assert_eq!(
        data.fields[0].source,
        Source::Images {
            path: "cifar10/train".into(),
            grayscale: false,
            size: None,
        }
    );
}

#[test]
fn cifar_sources_and_per_channel_normalize_lower() {
    let data = lower(
        "3, 32, 32",
        r#"    image = cifar("cifar-10-batches-bin") -> scale(1 / 255)
        -> normalize(mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.243, 0.261])
    label: i32 = cifar_labels("cifar-10-batches-bin")
    test {
        image = cifar("cifar-10-batches-bin/test_batch.bin") -> scale(1 / 255)
            -> normalize(mean: [0.4914, 0.4822, 0.4465], std: [0.247, 0.243, 0.261])
        label: i32 = cifar_labels("cifar-10-batches-bin/test_batch.bin")
    }"#,
    );
    assert_eq!(
        data.fields[0].source,
        Source::Cifar {
            path: "cifar-10-batches-bin".into()
        }
    );
    assert_eq!(
        data.fields[0].transforms[1],
        Transform::Normalize {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.247, 0.243, 0.261],
        }
    );
    assert_eq!(
        data.fields[1].source,
        Source::CifarLabels {
            path: "cifar-10-batches-bin".into()
        }
    );
}

#[test]
fn bad_arguments_point_at_the_argument() {
    let shape = "3, 32, 32";
    let labels = "\n    label: i32 = image_labels(\"x\")";

    let (e, at) = error(
        shape,
        &format!("    image = images(\"x\", grayscale: 1){labels}"),
    );
    assert_eq!(
        e.message,
        "`grayscale` takes `true` or `false`, found int 1"
    );
    assert_eq!(at, "1");

    let (e, at) = error(
        shape,
        &format!("    image = images(\"x\", size: [32]){labels}"),
    );
    assert_eq!(
        e.message,
        "`size` takes `[height, width]`, two ints from 1 to 65535"
    );
    assert_eq!(e.label.as_deref(), Some("found a list of 1 values"));
    assert_eq!(at, "[32]");

    let (e, _) = error(
        shape,
        &format!("    image = images(\"x\", size: [0, 32]){labels}"),
    );
    assert_eq!(e.label.as_deref(), Some("found int 0"));

    let (e, at) = error(
        shape,
        &format!("    image = images(\"x\", colour: true){labels}"),
    );
    assert_eq!(e.message, "`images` has no parameter `colour`");
    assert_eq!(e.label.as_deref(), Some("unknown keyword argument"));
    assert_eq!(at, "colour");

    let (e, at) = error(
        shape,
        &format!("    image = images(grayscale: true){labels}"),
    );
    assert_eq!(e.message, "`images` needs a folder path");
    assert_eq!(at, "images");

    let (e, at) = error(shape, &format!("    image = images(3){labels}"));
    assert_eq!(e.message, "expected a file path (a string), found int 3");
    assert_eq!(at, "3");

    let (e, _) = error(
        shape,
        "    image = cifar(\"a.bin\")\n    label: i32 = cifar_labels()",
    );
    assert_eq!(e.message, "missing argument `path` of `cifar_labels`");

    let (e, at) = error(
        shape,
        "    image = cifar(\"a.bin\", \"b.bin\")\n    label: i32 = cifar_labels(\"a.bin\")",
    );
    assert_eq!(e.message, "`cifar` takes 1 argument but more were given");
    assert_eq!(at, "\"b.bin\"");

    let (e, at) = error(shape, &format!("    image = image(\"x\"){labels}"));
    assert_eq!(e.message, "unknown data source `image`");
    assert_eq!(
        e.label.as_deref(),
        Some("expected one of `idx`, `csv`, `images`, `image_labels`, `cifar`, `cifar_labels`, `text`, `text_labels`")
    );
    assert!(e.help.as_deref().unwrap_or("").contains("images"), "{e:?}");
    assert_eq!(at, "image");

    let (e, at) = error(
        shape,
        "    image = cifar(\"a.bin\") -> cifar_labels(\"a.bin\")\n    label: i32 = cifar_labels(\"a.bin\")",
    );
    assert_eq!(
        e.message,
        "`cifar_labels` is a source; it starts a field, it cannot follow `->`"
    );
    assert_eq!(at, "cifar_labels");
}
