#include "napi_util.h"

#include <cmath>
#include <cstring>

namespace tdpo::napi {

std::string js_type_name(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return "boolean";
  if (v.IsNumber()) return "number " + std::to_string(v.As<Napi::Number>().DoubleValue());
  if (v.IsString()) return "string";
  if (v.IsTypedArray()) {
    switch (v.As<Napi::TypedArray>().TypedArrayType()) {
      case napi_float32_array: return "Float32Array";
      case napi_float64_array: return "Float64Array";
      case napi_int32_array: return "Int32Array";
      case napi_uint8_array: return "Uint8Array";
      default: return "TypedArray";
    }
  }
  if (v.IsArray()) return "Array";
  if (v.IsFunction()) return "function";
  if (v.IsObject()) return "object";
  return "value";
}

void throw_type(Napi::Env env, const std::string& expected, const std::string& what, const Napi::Value& got) {
  throw Napi::TypeError::New(env, "Expected " + expected + " for " + what + " but received " + js_type_name(got));
}

void expect_count(const Napi::CallbackInfo& info, size_t n, const char* fn) {
  if (info.Length() != n)
    throw Napi::TypeError::New(info.Env(), std::string("Expected ") + std::to_string(n) + " argument(s) for " + fn +
                                               " but received " + std::to_string(info.Length()));
}

std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsString()) throw_type(info.Env(), "a string", what, info[i]);
  return info[i].As<Napi::String>().Utf8Value();
}

double arg_number(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) throw_type(info.Env(), "a number", what, info[i]);
  return info[i].As<Napi::Number>().DoubleValue();
}

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* what) {
  double d = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d) || std::floor(d) != d) throw_type(info.Env(), "an integer", what, info[i]);
  return static_cast<int64_t>(d);
}

bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsBoolean()) throw_type(info.Env(), "a boolean", what, info[i]);
  return info[i].As<Napi::Boolean>().Value();
}

Napi::Object arg_object(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsObject() || info[i].IsArray()) throw_type(info.Env(), "an object", what, info[i]);
  return info[i].As<Napi::Object>();
}

static std::string field(const char* owner, const char* key) { return std::string(owner) + "." + key; }

std::string get_string(const Napi::Object& o, const char* key, const char* owner) {
  auto v = o.Get(key);
  if (!v.IsString()) throw_type(o.Env(), "a string", field(owner, key), v);
  return v.As<Napi::String>().Utf8Value();
}

int64_t get_int(const Napi::Object& o, const char* key, const char* owner) {
  auto v = o.Get(key);
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!std::isfinite(d) || std::floor(d) != d) throw_type(o.Env(), "an integer", field(owner, key), v);
  return static_cast<int64_t>(d);
}

double get_number(const Napi::Object& o, const char* key, const char* owner) {
  auto v = o.Get(key);
  if (!v.IsNumber()) throw_type(o.Env(), "a number", field(owner, key), v);
  return v.As<Napi::Number>().DoubleValue();
}

bool get_bool(const Napi::Object& o, const char* key, const char* owner) {
  auto v = o.Get(key);
  if (!v.IsBoolean()) throw_type(o.Env(), "a boolean", field(owner, key), v);
  return v.As<Napi::Boolean>().Value();
}

static int64_t shape_numel(at::IntArrayRef shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

static std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

at::Tensor to_float32_tensor(Napi::Env env, const Napi::Value& v, const char* what, at::IntArrayRef shape) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_type(env, "a Float32Array", what, v);
  auto a = v.As<Napi::Float32Array>();
  if (static_cast<int64_t>(a.ElementLength()) != shape_numel(shape))
    throw Napi::RangeError::New(env, std::string("Expected ") + std::to_string(shape_numel(shape)) + " elements (shape " +
                                         shape_str(shape) + ") for " + what + " but received " +
                                         std::to_string(a.ElementLength()));
  auto t = at::empty(shape, at::kFloat);
  if (a.ElementLength()) std::memcpy(t.data_ptr<float>(), a.Data(), a.ElementLength() * sizeof(float));
  return t;
}

at::Tensor to_int_tensor(Napi::Env env, const Napi::Value& v, const char* what, at::IntArrayRef shape) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_type(env, "an Int32Array", what, v);
  auto a = v.As<Napi::Int32Array>();
  if (static_cast<int64_t>(a.ElementLength()) != shape_numel(shape))
    throw Napi::RangeError::New(env, std::string("Expected ") + std::to_string(shape_numel(shape)) + " elements (shape " +
                                         shape_str(shape) + ") for " + what + " but received " +
                                         std::to_string(a.ElementLength()));
  auto t = at::empty(shape, at::kInt);
  if (a.ElementLength()) std::memcpy(t.data_ptr<int32_t>(), a.Data(), a.ElementLength() * sizeof(int32_t));
  return t.to(at::kLong);
}

at::Tensor float32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, at::IntArrayRef shape) {
  return to_float32_tensor(info.Env(), info[i], what, shape);
}

at::Tensor int32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, at::IntArrayRef shape) {
  return to_int_tensor(info.Env(), info[i], what, shape);
}

Napi::Float32Array to_float32_array(Napi::Env env, const at::Tensor& t) {
  auto c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  auto a = Napi::Float32Array::New(env, c.numel());
  if (c.numel()) std::memcpy(a.Data(), c.data_ptr<float>(), c.numel() * sizeof(float));
  return a;
}

Napi::Float64Array to_float64_array(Napi::Env env, const at::Tensor& t) {
  auto c = t.detach().to(at::kCPU, at::kDouble).contiguous();
  auto a = Napi::Float64Array::New(env, c.numel());
  if (c.numel()) std::memcpy(a.Data(), c.data_ptr<double>(), c.numel() * sizeof(double));
  return a;
}

Napi::Int32Array to_int32_array(Napi::Env env, const at::Tensor& t) {
  auto c = t.detach().to(at::kCPU, at::kInt).contiguous();
  auto a = Napi::Int32Array::New(env, c.numel());
  if (c.numel()) std::memcpy(a.Data(), c.data_ptr<int32_t>(), c.numel() * sizeof(int32_t));
  return a;
}

}  // namespace tdpo::napi
