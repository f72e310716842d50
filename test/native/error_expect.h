// Helpers for native tests of error paths: the message of a c10::Error thrown by a call, and an expectation that a
// call throws one mentioning a fragment.
#pragma once
#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include <functional>
#include <string>

// The message (without backtrace) of the c10::Error that f() throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

// Fails unless fn() throws a c10::Error whose message contains `part`.
inline void expect_error(const std::function<void()>& fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning " << part;
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}
