//! Double precision end to end in the interpreter: a data field declared
//! `f64` reaches the graph unrounded, `double(x)` casts to f64, a model
//! written in f64 trains, and its gradient passes a finite-difference
//! check far tighter than f32 allows. The JIT, which computes in f32,
//! refuses such a model with a clear error.

use nnc_ir::interp::{eval, Env, EvalOptions};
use nnc_ir::{DType, Tensor};
use nnc_runtime::{Backend, Batch, BatchData, Executor, Interpreter, Jit, Programs};

const SOURCE: &str = r#"
layer dense64(x: f64[b, in], units: int) {
    param w: f64[in, units] = xavier_uniform
    param b: f64[units] = zeros
    return matmul(x, w) + b
}

model Reg {
    input x: f64[B, 3]
    p = x -> dense64(4) -> tanh -> dense64(1)
    output p
}

data D {
    x: f64 = idx("x.idx")
    y: f32[B, 1] = csv("values.csv", columns: [0, 1])
}

train Reg on D {
    loss      = mean((p - double(y)) * (p - double(y)))
    optimizer = sgd(lr: 0.1)
    batch     = 4
    epochs    = 1
}
"#;

/// Values no f32 holds exactly: 0.1 + k·1e-9.
fn value(k: usize) -> f64 {
    0.1 + k as f64 * 1e-9
}

/// The module and a folder with its data files, one folder per test: the
/// tests run in parallel threads of one process, and one writing the files
/// while another reads them read a truncated file.
fn setup(test: &str) -> (nnc_ir::Module, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("nnc-f64-data-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // IDX holds f64 as such (type 0x0E); CSV values are parsed as f32.
    let mut idx = vec![0, 0, 0x0E, 2];
    idx.extend(4u32.to_be_bytes());
    idx.extend(3u32.to_be_bytes());
    let mut csv = String::new();
    for row in 0..4 {
        for c in 0..3 {
            idx.extend(value(row * 4 + c).to_be_bytes());
        }
        csv.push_str(&format!("{}\n", value(row * 4 + 3)));
    }
    std::fs::write(dir.join("x.idx"), idx).unwrap();
    std::fs::write(dir.join("values.csv"), csv).unwrap();
    let src = nnc_dsl::SourceFile::new("reg.nn", SOURCE);
    (nnc::driver::compile_source(&src, None).unwrap(), dir)
}

fn programs(module: &nnc_ir::Module) -> Programs {
    let step = nnc::driver::train_step(module).unwrap();
    let evaluation = module.train.as_ref().unwrap().evaluation.clone();
    Programs::new(module.forward.clone(), evaluation, step)
}

fn batch(module: &nnc_ir::Module, dir: &std::path::Path) -> Batch {
    let data = nnc_runtime::loader::load(module.data.as_ref().unwrap(), dir).unwrap();
    let names = vec!["x".to_string(), "y".to_string()];
    let mut batch = Batch::default();
    data.fill_batch(&data.train, &names, &[0, 1, 2, 3], &mut batch)
        .unwrap();
    nnc_runtime::train::set_hyper(&mut batch, nnc_ir::LEARNING_RATE, 0.1);
    batch
}

#[test]
fn an_f64_field_reaches_the_interpreter_unrounded_and_trains() {
    let (module, dir) = setup("unrounded");
    let batch = batch(&module, &dir);
    let x = batch.get("x").unwrap();
    assert_eq!(x.shape, [4, 3]);
    let BatchData::F64(values) = &x.data else {
        panic!("x is delivered as {:?}", x.data)
    };
    let want: Vec<f64> = (0..4)
        .flat_map(|row| (0..3).map(move |c| value(row * 4 + c)))
        .collect();
    assert_eq!(values, &want);
    // The label field is f32, cast by `double(y)` in the loss.
    assert!(matches!(batch.get("y").unwrap().data, BatchData::F32(_)));

    let mut interp = Interpreter::new(programs(&module), 3).unwrap();
    let first = interp.train_step(&batch).unwrap().loss;
    for _ in 0..20 {
        interp.train_step(&batch).unwrap();
    }
    let last = interp.evaluate(&batch).unwrap().loss;
    assert!(last < first, "loss {first} -> {last}");
    let state = interp.state();
    let (_, w) = state.iter().find(|(n, _)| n == "dense64.w").unwrap();
    assert_eq!(w.dtype, DType::F64);
}

/// Central differences with h = 1e-6 agree with autodiff to 1e-9 relative:
/// only possible when nothing on the way is rounded to f32 (f32 rounding
/// alone would err by ~1e-7 / h = 0.1). Run in the interpreter's ordinary
/// mode, which rounds f32 nodes: this graph has none on the loss's path
/// but the label's cast.
#[test]
fn a_double_precision_gradient_check() {
    let (module, dir) = setup("gradient_check");
    let batch = batch(&module, &dir);
    let objective = &module.train.as_ref().unwrap().objective;
    let graph = nnc_passes::differentiate(objective, nnc_ir::LOSS).unwrap();
    let mut env = Env::new();
    nnc_ir::init::init_leaves(&graph, 5, &mut env).unwrap();
    for field in &batch.fields {
        let (dtype, data) = match &field.data {
            BatchData::F64(v) => (DType::F64, v.clone()),
            BatchData::F32(v) => (DType::F32, v.iter().map(|&x| f64::from(x)).collect()),
            BatchData::I32(v) => (DType::I32, v.iter().map(|&x| f64::from(x)).collect()),
        };
        env.insert(
            field.name.clone(),
            Tensor::from_vec(dtype, &field.shape, data).unwrap(),
        );
    }
    let values = eval(&graph, &env, EvalOptions::F32).unwrap();
    let loss = |env: &Env| {
        eval(&graph, env, EvalOptions::F32)
            .unwrap()
            .output("loss")
            .unwrap()
            .data[0]
    };
    let h = 1e-6;
    let mut checked = 0;
    for (_, param) in graph.params() {
        let grad = values.output(&format!("grad.{param}")).unwrap().clone();
        assert_eq!(grad.dtype, DType::F64);
        for i in 0..grad.data.len() {
            let mut plus = env.clone();
            plus.get_mut(param).unwrap().data[i] += h;
            let mut minus = env.clone();
            minus.get_mut(param).unwrap().data[i] -= h;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
            let analytic = grad.data[i];
            assert!(
                (analytic - numeric).abs() <= 1e-9 + 1e-6 * numeric.abs(),
                "{param}[{i}]: autodiff {analytic}, finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 4 + 4 + 4 + 1);
}

#[test]
fn the_jit_refuses_f64_with_a_clear_error() {
    let (module, _) = setup("refuses");
    let message = match Jit::new(programs(&module), 1) {
        Ok(_) => panic!("the JIT compiled an f64 model"),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("f64") && message.contains("--backend interp"),
        "{message}"
    );
    // The executor a run makes fails the same way, without a panic.
    assert!(Backend::Jit.executor(programs(&module), 1).is_err());
}
