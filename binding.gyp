{
  "targets": [
    {
      "target_name": "torch_dpo",
      "sources": [
        "<!@(node -p \"['native/core','native/napi'].flatMap(d=>require('fs').readdirSync(d).filter(f=>f.endsWith('.cpp')).sort().map(f=>d+'/'+f)).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/core",
        "<!@(node scripts/find-libtorch.js --gyp-includes)"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "<!@(node scripts/find-libtorch.js --gyp-defines)"],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
      "cflags_cc": ["<!@(node scripts/find-libtorch.js --gyp-std)", "-fexceptions", "-frtti", "-O2", "-Wno-unused-parameter"],
      "ldflags": ["<!@(node scripts/find-libtorch.js --gyp-ldflags)"],
      "libraries": ["<!@(node scripts/find-libtorch.js --gyp-libs)"]
    }
  ]
}
