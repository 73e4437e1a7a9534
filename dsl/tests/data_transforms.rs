//! Lowering of the fitted transforms (`standardize`, `minmax`) and the
//! augmentations (`random_crop`, `hflip`, `vflip`, `rotate`, `affine`,
//! `color_jitter`, `gaussian_noise`) of data blocks, and their located
//! errors. Shapes are the runtime's to check (it has the samples).

use nnc_dsl::{compile, Error, SourceFile};
use nnc_ir::{Augment, DataSpec, FitAxis, Transform};

fn program(image: &str, label: &str) -> String {
    format!(
        "model M {{\n    input image: f32[B, 3, 32, 32]\n    \
         logits = reshape(image, [B, -1]) -> dense(10)\n    output logits\n}}\n\
         data D {{\n    image = {image}\n    label: i32 = {label}\n}}\n\
         train M on D {{\n    loss = cross_entropy(logits, label)\n    optimizer = adam\n}}\n"
    )
}

fn lower(image: &str) -> DataSpec {
    let text = program(image, "cifar_labels(\"c\")");
    match compile(&SourceFile::new("t.nn", text), None) {
        Ok(module) => module.data.expect("a data block"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The error and the source text its span covers.
fn error(image: &str, label: &str) -> (Error, String) {
    let text = program(image, label);
    let err = compile(&SourceFile::new("t.nn", text.clone()), None).unwrap_err();
    let covered = text[err.span.start..err.span.end].to_string();
    (err, covered)
}

const LABEL: &str = "cifar_labels(\"c\")";

#[test]
fn the_cifar_pipeline_with_crop_and_flip_lowers() {
    let data = lower(
        "cifar(\"c\") -> scale(1 / 255) -> random_crop(32, padding: 4) -> hflip \
         -> normalize(mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25])",
    );
    let t = &data.fields[0].transforms;
    assert_eq!(
        t[1],
        Transform::Augment(Augment::RandomCrop {
            size: [32, 32],
            padding: 4
        })
    );
    assert_eq!(
        t[2],
        Transform::Augment(Augment::Flip {
            horizontal: true,
            p: 0.5
        })
    );
}

#[test]
fn every_transform_lowers_with_its_options() {
    let data = lower(
        "cifar(\"c\") -> scale(1 / 255) -> vflip(p: 0.25) -> rotate(15) \
         -> affine(degrees: 10, translate: [0.1, 0.2], scale: [0.9, 1.1]) \
         -> color_jitter(brightness: 0.2, saturation: 0.3) -> random_crop([30, 28]) \
         -> gaussian_noise(std: 0.01) -> standardize(per: \"channel\") -> minmax()",
    );
    let t = &data.fields[0].transforms;
    let augment = |k: usize| match &t[k] {
        Transform::Augment(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        augment(1),
        Augment::Flip {
            horizontal: false,
            p: 0.25
        }
    );
    assert_eq!(
        augment(2),
        Augment::Affine {
            degrees: 15.0,
            translate: None,
            scale: None
        }
    );
    assert_eq!(
        augment(3),
        Augment::Affine {
            degrees: 10.0,
            translate: Some([0.1, 0.2]),
            scale: Some([0.9, 1.1])
        }
    );
    assert_eq!(
        augment(4),
        Augment::ColorJitter {
            brightness: 0.2,
            contrast: 0.0,
            saturation: 0.3
        }
    );
    assert_eq!(
        augment(5),
        Augment::RandomCrop {
            size: [30, 28],
            padding: 0
        }
    );
    assert_eq!(augment(6), Augment::GaussianNoise { std: 0.01 });
    assert_eq!(
        t[7],
        Transform::Standardize {
            per: FitAxis::Channel
        }
    );
    assert_eq!(
        t[8],
        Transform::MinMax {
            per: FitAxis::Element
        }
    );
}

#[test]
fn bad_options_are_located() {
    let cases: [(&str, &str, &str); 9] = [
        (
            "cifar(\"c\") -> hflip(p: 1.5)",
            "a probability must be in [0, 1], found 1.5",
            "1.5",
        ),
        (
            "cifar(\"c\") -> vflip(-0.1)",
            "a probability must be in [0, 1], found -0.1",
            "-0.1",
        ),
        (
            "cifar(\"c\") -> gaussian_noise(std: -1)",
            "the noise's `std` must be >= 0, found -1",
            "-1",
        ),
        (
            "cifar(\"c\") -> random_crop(0)",
            "the crop size must be a positive int, found int 0",
            "0",
        ),
        (
            "cifar(\"c\") -> random_crop(32, padding: -4)",
            "expected a non-negative int, found int -4",
            "-4",
        ),
        (
            "cifar(\"c\") -> affine(degrees: 10, scale: [1.2, 0.8])",
            "`scale` is `[lo, hi]` with lo <= hi, found [1.2, 0.8]",
            "[1.2, 0.8]",
        ),
        (
            "cifar(\"c\") -> affine(translate: [0.1, 2])",
            "`translate` must lie in [0, 1], found [0.1, 2]",
            "[0.1, 2]",
        ),
        (
            "cifar(\"c\") -> color_jitter(contrast: -0.5)",
            "`contrast` must be >= 0, found -0.5",
            "-0.5",
        ),
        (
            "cifar(\"c\") -> standardize(per: \"row\")",
            "`per` of `standardize` is \"element\" or \"channel\", found \"row\"",
            "\"row\"",
        ),
    ];
    for (image, message, at) in cases {
        let (e, covered) = error(image, LABEL);
        assert_eq!(e.message, message, "{image}");
        assert_eq!(covered, at, "{image}");
    }
}

#[test]
fn augmentations_belong_to_images() {
    let (e, at) = error("cifar(\"c\")", "cifar_labels(\"c\") -> hflip");
    assert_eq!(
        e.message,
        "`hflip` augments images, but this field holds class labels"
    );
    assert_eq!(at, "hflip");
    let (e, _) = error(
        "cifar(\"c\")",
        "cifar_labels(\"c\") -> one_hot(10) -> rotate(5)",
    );
    assert_eq!(
        e.message,
        "`rotate` augments images, but this field holds class labels"
    );
    let (e, at) = error(
        "cifar(\"c\") -> scale(1 / 255) -> standardize() -> color_jitter(brightness: 0.1)",
        LABEL,
    );
    assert!(
        e.message
            .starts_with("`color_jitter` works on values in [0, 1]"),
        "{}",
        e.message
    );
    assert_eq!(at, "color_jitter(brightness: 0.1)");
    let (e, at) = error("cifar(\"c\") -> flip", LABEL);
    assert_eq!(e.message, "unknown transform `flip`");
    assert_eq!(at, "flip");
}
